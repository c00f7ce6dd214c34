"""The dependency arrows (ARCHITECTURE.md, "The parts and their arrows"), checked on every import statement of the
packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package (or sub-package) → top-level modules it must never import
FORBIDDEN: dict[str, set[str]] = {
    "api_schemas": {"ris_model", "server", "worker", "torch", "numpy", "fastapi", "celery", "sqlalchemy", "redis"},
    "ris_model": {"server", "worker", "fastapi", "celery", "sqlalchemy", "redis", "starlette", "kombu"},
    "server": {"ris_model", "worker", "torch"},
    "server/store": {"fastapi", "starlette", "ris_model", "worker", "torch"},
}
#: the rooms of ris_model: the science (top-level modules, model/, accel/, estimators/) never reaches up into
#: running jobs (train/, diagnose/, evaluate/, the inference API, the command line); evaluation works from
#: checkpoints, never from a trainer
_JOB_ROOMS = {"ris_model.train", "ris_model.diagnose", "ris_model.evaluate", "ris_model.inference", "ris_model.cli"}
ROOMS: dict[str, set[str]] = {
    **{f"ris_model/{m}.py": _JOB_ROOMS for m in ("physics", "scenes", "losses", "spectral", "metrics", "errors")},
    "ris_model/model": _JOB_ROOMS,
    "ris_model/accel": _JOB_ROOMS,
    "ris_model/estimators": _JOB_ROOMS | {"ris_model.model", "ris_model.accel"},
    "ris_model/evaluate": {"ris_model.train.trainer", "ris_model.train.jobs", "ris_model.diagnose", "ris_model.cli"},
    "ris_model/diagnose": {"ris_model.evaluate", "ris_model.cli"},
    "ris_model/train": {"ris_model.evaluate", "ris_model.cli"},
}
#: modules nothing outside their own package may import (nothing imports worker or the API modules of server)
PRIVATE = {"worker": "worker", "server.main": "server", "server.routes": "server", "server.deps": "server",
           "server.errors": "server"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_arrows(package: str) -> None:
    bad = [f"{path.relative_to(ROOT)} imports {name}" for path in _files(package) for name in _imports(path)
           if name.split(".")[0] in FORBIDDEN[package]]
    assert not bad, "\n".join(bad)


def test_nothing_outside_imports_worker_or_the_api_modules() -> None:
    bad = []
    for package in ("api_schemas", "ris_model", "server", "worker"):
        for path in _files(package):
            for name in _imports(path):
                for private, owner in PRIVATE.items():
                    if (name == private or name.startswith(private + ".")) and package != owner:
                        bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_ris_model_rooms_import_only_downwards(room: str) -> None:
    path = ROOT / room
    files = [path] if path.suffix == ".py" else _files(room)
    assert files and all(f.exists() for f in files), f"{room} is not a module or package of ris_model"
    bad = [f"{f.relative_to(ROOT)} imports {name}" for f in files for name in _imports(f)
           for forbidden in ROOMS[room] if name == forbidden or name.startswith(forbidden + ".")]
    assert not bad, "\n".join(bad)


#: what the client (client/) may import besides the standard library: it runs where neither torch nor the
#: server is installed
CLIENT_ALLOWED = {"api_schemas", "client", "httpx", "pydantic", "tqdm"}


def test_the_client_imports_only_api_schemas_httpx_and_the_standard_library() -> None:
    import sys

    bad = [f"{path.relative_to(ROOT)} imports {name}" for path in _files("client") for name in _imports(path)
           if name.split(".")[0] not in CLIENT_ALLOWED | set(sys.stdlib_module_names)]
    assert not bad, "\n".join(bad)
