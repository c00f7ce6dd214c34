"""ris_model.cli, run in-process: `diagnose` writes metrics, checkpoints, report.json and report.md and prints the
verdict line (issue 5), also when the run aborts on non-finite steps."""

from __future__ import annotations

import json
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
