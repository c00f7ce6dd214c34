"""Hand-made mutations of the product code, each against the test written to catch it (docs/RESULTS.md,
"Mutation score"). Applies one mutation at a time, runs its tests, restores the file, and checks that the
product code is unchanged at the end. Prints a table and writes var/mutation/oracles.json.

Usage: .venv/bin/python bench/oracle_mutations.py [NAME-SUBSTRING ...]   (DATABASE_URL_PG as for the tests)
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["api_schemas", "ris_model", "server", "worker"]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("resume restores nothing (returns after the config check)", "ris_model/train/trainer.py",
             'was written for another config; cannot resume")\n',
             'was written for another config; cannot resume")\n        return\n',
             ("tests/ris_model/train/test_resume_exact.py",)),
    Mutation("resume does not restore the RNG state", "ris_model/train/trainer.py",
             '        torch.set_rng_state(state[ckpt.RNG_KEY]["torch"].cpu())\n', "",
             ("tests/ris_model/train/test_resume_exact.py",)),
    Mutation("RUNNING a source of CANCELLED", "server/store/jobs.py",
             "S.CANCELLED: frozenset({S.QUEUED, S.CANCELLING}),",
             "S.CANCELLED: frozenset({S.QUEUED, S.CANCELLING, S.RUNNING}),",
             ("tests/server/store/test_state_machine_design.py",)),
    Mutation("requeue guard attempt < max_attempts removed", "server/store/jobs.py",
             "    if to is S.QUEUED:\n        conditions.append(JobRow.attempt < JobRow.max_attempts)\n", "",
             ("tests/server/store/test_state_machine_design.py",)),
    Mutation("SSE live branch disabled", "server/routes/metrics.py",
             "            elif isinstance(message, LiveMetrics):",
             "            elif False and isinstance(message, LiveMetrics):",
             ("tests/server/routes/test_metrics_live.py",)),
    Mutation("K label off by one (K instead of K - 1, wrapped)", "ris_model/losses.py",
             "nnf.cross_entropy(out.k_logits.float(), batch.k - 1)",
             "nnf.cross_entropy(out.k_logits.float(), batch.k % out.k_logits.shape[1])",
             ("tests/ris_model/test_loss_values.py",)),
    Mutation("K label off by one (K - 2, wrapped)", "ris_model/losses.py",
             "nnf.cross_entropy(out.k_logits.float(), batch.k - 1)",
             "nnf.cross_entropy(out.k_logits.float(), (batch.k - 2) % out.k_logits.shape[1])",
             ("tests/ris_model/test_loss_values.py",)),
    Mutation("azimuth and elevation swapped when building A", "ris_model/scenes.py",
             "A = steering(system, az, el, torch.where(", "A = steering(system, el, az, torch.where(",
             ("tests/ris_model/test_scene_contract.py",)),
    Mutation("the reaper's last-resort terminate not sent", "worker/reaper.py",
             '            self._producer.control.revoke(task_id, terminate=True, signal="SIGKILL")\n',
             "            pass\n",
             ("tests/fault/test_reaper_terminate.py",)),
)


def run(mutation: Mutation) -> dict[str, object]:
    path = ROOT / mutation.path
    source = path.read_text(encoding="utf-8")
    if source.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the code to mutate is not in {mutation.path} exactly once")
    path.write_text(source.replace(mutation.old, mutation.new), encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--timeout=300",
                               *mutation.tests], cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(source, encoding="utf-8")
    lines = proc.stdout.strip().splitlines()
    failed = [line.removeprefix("FAILED ").split(" - ")[0] for line in lines if line.startswith("FAILED")]
    return {"mutation": mutation.name, "file": mutation.path, "caught": proc.returncode != 0,
            "failed_tests": failed, "summary": lines[-1] if lines else proc.stderr[-300:]}


def main() -> None:
    wanted = sys.argv[1:]
    rows = [run(m) for m in MUTATIONS if not wanted or any(w in m.name for w in wanted)]
    diff = subprocess.run(["git", "diff", "--stat", "--", *PRODUCT], cwd=ROOT, capture_output=True, text=True)
    for row in rows:
        print(f"{'CAUGHT' if row['caught'] else 'MISSED'}  {row['mutation']}  ({row['summary']})")
        for test in row["failed_tests"]:
            print(f"        {test}")
    print(f"product code unchanged afterwards: {diff.stdout.strip() == ''}")
    out = ROOT / "var" / "mutation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "oracles.json").write_text(json.dumps({"rows": rows, "product_clean": diff.stdout.strip() == ""},
                                                 indent=2))


if __name__ == "__main__":
    main()
