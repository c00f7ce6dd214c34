"""The README documents every setting and names commands that exist."""

from __future__ import annotations

from pathlib import Path

from server.settings import Settings
from worker.cli import build_parser, curl_lines

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_setting() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_readme_commands_exist() -> None:
    for script in ("scripts/run-service", "scripts/test", ".ci/run"):
        assert (ROOT / script).is_file(), script
    for bench in ("generate.py", "train.py", "profile_step.py", "baselines.py", "api.py"):
        assert (ROOT / "bench" / bench).is_file(), bench


def test_readme_first_job_lines_are_what_run_service_prints() -> None:
    args = build_parser().parse_args(["serve"])  # scripts/run-service runs `ris-jobs serve` with its defaults
    printed = "\n".join(curl_lines(f"{args.host}:{args.port}"))
    assert f"```bash\n{printed}\n```" in README
