"""Print the project's base dependencies plus the named extras, one requirement a line (for `pip install -r`).

The Dockerfile installs dependencies from this list before it copies the source, so that the dependency layer
is cached across code changes. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """Base dependencies and those of `extras` (self-references such as `ris-jobs[worker]` are expanded)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out = list(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            if req.startswith(f"{project['name']}["):
                pending.extend(e.strip() for e in req.split("[", 1)[1].rstrip("]").split(","))
            else:
                out.append(req)
    return out


if __name__ == "__main__":
    sys.stdout.write("\n".join(requirements(Path(__file__).resolve().parents[1] / "pyproject.toml", sys.argv[1:])))
    sys.stdout.write("\n")
