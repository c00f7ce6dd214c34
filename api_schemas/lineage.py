"""Where a run comes from: its config's digest, the code that ran it, the weights it started from, its tags.

Owns: `config_sha256` (the one digest of a job config: canonical JSON, the same for a config however it was
written), `init_mismatch` (whether one run's weights can start another), `code_version` (the package version,
plus the git commit when the code runs from a checkout), `Tag` and `TAG_PATTERN`. Standard library and pydantic
only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

from pydantic import StringConstraints

#: A tag: a short label a user puts on jobs to find them again (`GET /v1/jobs?tag=`).
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,63}$"
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
#: Most tags one job may carry.
MAX_TAGS = 16
#: Config keys left out of the digest while they hold None, so that adding an optional field keeps the digest
#: (and the resumability) of every config written before it.
_OPTIONAL_WHEN_NONE = ("init_from",)
#: Model settings that leave the weights' shapes alone: a run may change them when it starts from a checkpoint.
WEIGHT_NEUTRAL_MODEL_FIELDS = frozenset({"cuda_graphs", "dropout", "look_refine_rounds", "normalize_atoms"})
#: The distribution whose version names the code.
DISTRIBUTION = "ris-jobs"


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a config as stored (`model_dump(mode="json")`)."""
    body = {k: v for k, v in config.items() if not (k in _OPTIONAL_WHEN_NONE and v is None)}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def init_mismatch(source: dict[str, Any], target: dict[str, Any]) -> str | None:
    """Why weights trained under config `source` cannot start a run of config `target` (both stored configs), or
    None when they can: the system must be the same, and the model settings that shape the weights too."""
    if source.get("system") != target.get("system"):
        return "it was trained for another system config; `system` must match"
    theirs, ours = source.get("model", {}), target.get("model", {})
    differ = sorted(k for k in ours.keys() | theirs.keys()
                    if k not in WEIGHT_NEUTRAL_MODEL_FIELDS and theirs.get(k) != ours.get(k))
    if differ:
        return f"its weights do not fit this model (model.{', model.'.join(differ)} differ)"
    return None


@lru_cache(maxsize=1)
def code_version() -> str:
    """`<package version>` or `<package version>+g<commit>` when the code runs from a git checkout."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git_commit(Path(__file__).resolve().parent.parent)
    return f"{version}+g{commit[:12]}" if commit else version


def _git_commit(directory: Path) -> str | None:
    """The commit checked out at `directory`, or None (no git, not a checkout, or git fails)."""
    if not (directory / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if len(commit) == 40 else None
