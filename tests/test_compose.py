"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command our image runs names
something that exists in this project (a console script and its subcommand, a module, a file)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _subcommands() -> set[str]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices)  # type: ignore[attr-defined]


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _built_services() -> list[tuple[str, dict[str, Any]]]:
    """Services that run an image built from this repository (the others run upstream images)."""
    return [(name, svc) for name, svc in _compose()["services"].items() if svc.get("image", "").startswith("ris-jobs")]


def _stages() -> dict[str, list[str]]:
    """Dockerfile stage name → its instruction lines (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("FROM "):
            current = stages.setdefault(line.split(" AS ")[-1].strip(), [])
        elif current is not None and line and not line.startswith("#"):
            current.append(line)
    return stages


def assert_runs_project_code(argv: list[str]) -> None:
    """`argv` starts a console script of ours with a known subcommand, `python -m <our module>`, or a file."""
    head = argv[0]
    if head in _console_scripts():
        target = _console_scripts()[head].split(":")[0]
        assert importlib.util.find_spec(target) is not None, f"{head} -> {target} is not importable"
        assert argv[1] in _subcommands(), f"{head} has no subcommand {argv[1]!r}"
    elif head in ("python", "python3") and argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"module {argv[2]} does not exist"
    else:
        assert (ROOT / head).is_file(), f"{head} is neither a console script, a module nor a project file"


def test_compose_has_every_service() -> None:
    assert {"redis", "postgres", "minio", "createbucket", "api", "worker", "cpu-worker", "reaper"} <= set(
        _compose()["services"])


@pytest.mark.parametrize("name", ["api", "worker", "cpu-worker", "reaper"])
def test_compose_service_command_exists_in_project(name: str) -> None:
    svc = _compose()["services"][name]
    for key in ("entrypoint", "command"):
        if key in svc:
            assert_runs_project_code(_argv(svc[key]))


def test_compose_built_services_use_the_dockerfile() -> None:
    for name, svc in _built_services():
        if "build" not in svc:
            continue
        context = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
        assert (ROOT / context / "Dockerfile").is_file(), f"{name}: no Dockerfile in {context}"
        assert svc["build"]["target"] in _stages(), f"{name}: no stage {svc['build']['target']!r}"


def test_compose_builds_each_image_once_and_every_image_it_runs() -> None:
    builders: dict[str, list[str]] = {}
    for name, svc in _built_services():
        if "build" in svc:
            builders.setdefault(svc["image"], []).append(name)
    assert all(len(names) == 1 for names in builders.values()), builders
    for name, svc in _built_services():
        assert svc["image"] in builders, f"{name} runs {svc['image']}, which no service builds"
        if "build" not in svc:
            assert svc.get("pull_policy") == "never", f"{name} must not pull {svc['image']} from a registry"
    services = _compose()["services"]
    assert services["api"]["image"] == services["reaper"]["image"] != services["worker"]["image"]


def test_api_image_has_no_torch_and_installs_dependencies_before_the_source() -> None:
    stages = _stages()
    targets = {_compose()["services"][name]["build"]["target"] for name in ("api", "worker")}
    assert targets <= set(stages)
    api = " ".join(stages["api"])
    assert "torch" not in api and "worker" not in api, "the api stage installs neither torch nor the [worker] extra"
    for name, lines in stages.items():
        copy_all = next(i for i, ln in enumerate(lines) if ln.startswith("COPY . "))
        install = next(i for i, ln in enumerate(lines) if ln.startswith("RUN ") and "pip install -r" in ln)
        assert lines.index("COPY pyproject.toml /app/") < install < copy_all, f"stage {name}: dependency layer first"


def test_compose_worker_reserves_gpus() -> None:
    devices = _compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)


def test_compose_services_share_the_store_through_minio_not_a_volume() -> None:
    services = _compose()["services"]
    assert services["minio"]["image"].startswith("minio/minio")
    for name, svc in _built_services():
        env = svc["environment"]
        assert {"DATABASE_URL", "REDIS_URL", "ARTIFACT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
        assert env["ARTIFACT_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert not any(":/data/artifacts" in str(v) for v in svc.get("volumes", [])), f"{name} shares a volume"
        assert name == "migrate" or svc["depends_on"].get("api", svc["depends_on"].get("createbucket")), name


def test_createbucket_makes_the_bucket_of_artifact_url_before_the_api_starts() -> None:
    services = _compose()["services"]
    bucket = services["api"]["environment"]["ARTIFACT_URL"].removeprefix("s3://").split("/")[0]
    create = services["createbucket"]
    assert create["image"].startswith("minio/mc") and create["restart"] == "no"
    assert f"mb --ignore-existing store/{bucket}" in " ".join(create["command"])
    assert services["api"]["depends_on"]["createbucket"] == {"condition": "service_completed_successfully"}


def test_gpu_and_cpu_workers_serve_their_queues() -> None:
    services = _compose()["services"]
    parser = build_parser()
    for name, queues in (("worker", ("gpu",)), ("cpu-worker", ("cpu",))):
        argv = _argv(services[name]["command"])
        assert parser.parse_args(argv[1:]).queues == queues, name
    assert "deploy" not in services["cpu-worker"], "the CPU worker reserves no GPU"


def test_dockerfile_cmd_exists_in_project() -> None:
    for name, lines in _stages().items():
        cmd_lines = [ln for ln in lines if ln.startswith("CMD ")]
        assert cmd_lines, f"stage {name} has a CMD"
        assert_runs_project_code(json.loads(cmd_lines[-1].removeprefix("CMD ")))


def test_run_service_script_execs_the_serve_command() -> None:
    script = ROOT / "scripts" / "run-service"
    assert script.stat().st_mode & 0o111, "scripts/run-service is executable"
    text = script.read_text()
    assert "_venv.sh" in text
    assert 'exec "$VENV/bin/ris-jobs" serve "$@"' in text
