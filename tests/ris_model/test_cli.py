"""ris_model.cli: `diagnose` writes metrics, checkpoints, report.json and report.md and prints the verdict line,
also when the run aborts on non-finite steps; the conventions of --help, --version, a closed output pipe and
presets (mostly in-process; the pipe through a real `head`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from api_schemas import DiagnosticReport
from ris_model.cli import main
from tests.worker.configs import quick_diagnostic_config


def _write_config(tmp_path: Path, **debug: object) -> Path:
    """A tiny diagnostic (one k_only epoch of 4 batches, cheapest checks) as a JSON file."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(quick_diagnostic_config(**debug)))
    return path


def test_diagnose_writes_report_json_and_markdown_and_prints_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    rc = main(["diagnose", "--config", str(_write_config(tmp_path)), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    report = DiagnosticReport.model_validate_json((out / "report.json").read_text())
    assert [c.id for c in report.checks] == list(range(1, 11))
    assert (out / "report.md").read_text() == report.to_markdown()
    assert "| # | check | status | summary |" in (out / "report.md").read_text()
    stdout = capsys.readouterr().out
    assert f"verdict: {report.verdict.status} — {report.verdict.decision}" in stdout
    assert (out / "metrics.jsonl").exists()
    assert (out / "checkpoints" / "final.pt").exists()


def test_diagnose_aborted_by_nan_exits_1_and_still_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, nan_loss_term="k", nan_from_step=0, nan_n_steps=0)
    data = json.loads(config.read_text())
    data["phases"][0]["max_consecutive_nonfinite"] = 2
    config.write_text(json.dumps(data))
    out = tmp_path / "run"
    rc = main(["diagnose", "--config", str(config), "--out", str(out), "--device", "cpu"])
    assert rc == 1
    report = DiagnosticReport.model_validate_json((out / "report.json").read_text())
    assert report.checks[0].status == "FAIL"
    assert "loss terms involved: k" in report.checks[0].summary
    assert (out / "report.md").exists()
    captured = capsys.readouterr()
    assert "verdict: FAIL — fix non-finite steps first" in captured.out
    assert "failed: 2 consecutive non-finite steps" in captured.err


def test_diagnose_with_an_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": {"batch_size": 0}}))
    assert main(["diagnose", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "invalid config" in capsys.readouterr().err


def test_help_shows_every_option_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--out", "--device", "--resume", "--print-default-config"):
        assert option in out
    assert "(default: None)" in out and "(default: False)" in out
    assert "issue" not in out.lower() and "seed" not in out.lower()


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"python -m ris_model {version('ris-jobs')}"


def test_print_default_config_into_a_closed_pipe_ends_without_a_traceback() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(f"'{sys.executable}' -m ris_model train --print-default-config | head -n 1", shell=True,
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.stdout == "{\n"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_print_default_config_is_a_valid_training_config(capsys: pytest.CaptureFixture[str]) -> None:
    from api_schemas import TrainingJobConfig

    assert main(["train", "--print-default-config"]) == 0
    assert TrainingJobConfig.model_validate_json(capsys.readouterr().out) == TrainingJobConfig()


def test_train_refuses_the_quickstart_preset_and_names_the_diagnostic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "quickstart", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "python -m ris_model diagnose --preset quickstart" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing ran"


def test_diagnose_refuses_a_preset_and_a_config_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["diagnose", "--preset", "quickstart", "--config", str(_write_config(tmp_path)), "--print-default-config"])
    assert exc.value.code == 2
    assert "either --preset or --config" in capsys.readouterr().err
