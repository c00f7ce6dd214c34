"""`ris-jobs` user commands as a script runs them (subprocesses) against the live service: JSON output, the
exit codes that tell how a job ended, and no torch import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from client.cli import COMMANDS
from tests.client.conftest import API_KEY, REPO, Live, slow_config
from tests.worker.configs import quick_diagnostic_config

pytestmark = pytest.mark.integration


def ris_jobs(live: Live | None, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if live is not None:
        env |= {"RIS_JOBS_URL": live.url, "RIS_JOBS_API_KEY": API_KEY}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)


def write_config(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_submit_wait_status_download_report(live: Live, tmp_path: Path) -> None:
    done = ris_jobs(live, "submit", "diagnostic", "--config", write_config(tmp_path, quick_diagnostic_config()),
                    "--name", "cli", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "SUCCEEDED" and job["name"] == "cli"
    job_id = job["id"]

    status = ris_jobs(live, "status", job_id)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    listed = json.loads(ris_jobs(live, "list", "--json", "--all", "--kind", "diagnostic").stdout)
    assert job_id in {j["id"] for j in listed["items"]}

    checkpoints = json.loads(ris_jobs(live, "checkpoints", job_id, "--json").stdout)
    downloaded = ris_jobs(live, "download", job_id, "final", "-o", str(tmp_path))
    assert downloaded.returncode == 0, downloaded.stderr
    path = Path(downloaded.stdout.strip())
    assert path.parent == tmp_path and path.stat().st_size in {c["size"] for c in checkpoints}

    report = ris_jobs(live, "report", job_id, "--md")
    assert report.returncode == 0 and "Verdict" in report.stdout
    assert json.loads(ris_jobs(live, "report", job_id).stdout)["kind"] == "diagnostic"
    logs = ris_jobs(live, "logs", job_id, "-f")
    assert logs.returncode == 0 and logs.stdout.strip()

    watched = ris_jobs(live, "watch", job_id, "--json")
    rows = [json.loads(line) for line in watched.stdout.splitlines()]
    assert watched.returncode == 0 and rows[-1] == {"event": "state", "state": "SUCCEEDED", "failure": None}
    assert ris_jobs(live, "delete", job_id).returncode == 0
    missing = ris_jobs(live, "status", job_id)
    assert missing.returncode == 2 and "404" in missing.stderr


def test_exit_codes_tell_failed_and_cancelled(live: Live, tmp_path: Path) -> None:
    failing = quick_diagnostic_config(nan_loss_term="k", nan_from_step=1)
    failing["phases"][0]["max_consecutive_nonfinite"] = 2
    submitted = ris_jobs(live, "submit", "diagnostic", "--config", write_config(tmp_path, failing), "--json")
    failed_id = json.loads(submitted.stdout)["id"]
    watched = ris_jobs(live, "watch", failed_id)
    assert watched.returncode == 1, watched.stderr
    assert "NONFINITE_ABORT" in watched.stdout and "FAILED" in watched.stderr

    slow_id = ris_jobs(live, "submit", "diagnostic", "--config", write_config(tmp_path, slow_config())).stdout.strip()
    cancelled = ris_jobs(live, "cancel", slow_id, "--wait")
    assert cancelled.returncode == 3, cancelled.stderr
    assert ris_jobs(live, "status", slow_id).returncode == 3


def test_usage_errors_exit_2(live: Live, tmp_path: Path) -> None:
    both = ris_jobs(live, "submit", "diagnostic", "--preset", "quickstart", "--config", "x.json")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    bad = quick_diagnostic_config()
    bad["data"]["batch_size"] = 0
    refused = ris_jobs(live, "submit", "diagnostic", "--config", write_config(tmp_path, bad))
    assert refused.returncode == 2 and "config.data.batch_size" in refused.stderr
    unreadable = ris_jobs(live, "submit", "diagnostic", "--config", str(tmp_path / "missing.json"))
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr
    unreachable = ris_jobs(None, "list", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 4 and "cannot reach" in unreachable.stderr


def test_user_commands_import_no_torch(live: Live) -> None:
    code = ("import sys; from worker.cli import main; rc = main(['list', '--json']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert not [m for m in sys.modules if m.startswith('ris_model')]; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RIS_JOBS_URL": live.url, "RIS_JOBS_API_KEY": API_KEY}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_command_has_help_with_defaults() -> None:
    top = ris_jobs(None, "--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        page = ris_jobs(None, command, "--help")
        assert page.returncode == 0, command
        assert "--url" in page.stdout and "http://127.0.0.1:8000" in page.stdout and "exit codes" in page.stdout
