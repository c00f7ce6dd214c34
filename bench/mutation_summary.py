"""Summarize one module's mutmut run (bench/mutation.sh): killed / checked, and every mutant not killed.

Run in the module's scratch copy after `mutmut run`. Usage: mutation_summary.py MODULE FILE SECONDS OUT.json
[PATTERN ...]; the patterns (mutant-name globs) restrict the count to the mutants that were run.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

#: mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code)
KILLED_CODES = {1, 3, 37, -9, -11}  # tests failed or errored, the type check caught it, or the test run crashed
TIMEOUT_CODES = {24, 36, 152, 255, -24}  # the tests hung: the mutant is caught (counted apart as well)
SKIPPED = 34
NO_TESTS = {5, 33}
SURVIVED = 0


def main() -> None:
    module, file, seconds, out, *patterns = sys.argv[1:]
    meta = Path("mutants") / (file + ".meta")
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    if patterns:
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    checked = {k: v for k, v in codes.items() if v is not None and v != SKIPPED}
    killed = [k for k, v in checked.items() if v in KILLED_CODES or v in TIMEOUT_CODES]
    survivors = sorted(k for k in checked if k not in killed)
    status = {k: ("no tests" if checked[k] in NO_TESTS else "survived" if checked[k] == SURVIVED
                  else f"exit {checked[k]}") for k in survivors}
    row = {
        "module": module, "file": file, "mutants": len(codes), "checked": len(checked), "killed": len(killed),
        "timeouts": sum(1 for v in checked.values() if v in TIMEOUT_CODES),
        "score_pct": round(100.0 * len(killed) / max(len(checked), 1), 1), "wall_s": int(seconds),
        "survivors": [f"{k}: {status[k]}" for k in survivors],
    }
    Path(out).write_text(json.dumps(row, indent=2))
    print(f"{module}: {row['killed']}/{row['checked']} killed ({row['score_pct']} %), "
          f"{len(codes) - len(checked)} not run, {row['wall_s']} s")
    for line in row["survivors"]:
        print(f"    {line}")


if __name__ == "__main__":
    main()
