#!/usr/bin/env bash
# Mutation score per module (mutmut 3, `pip install -e '.[dev]'`); not part of CI.
#
#   bench/mutation.sh [MODULE ...]     modules: losses jobs sse checkpoint scenes trainer (default: all, in that
#                                      order: the small ones first)
#
# Each module runs in its own scratch copy of the tracked tree (var/mutation/<module>/), with `only_mutate` set to
# that file and the pytest selection set to the tests that exercise it, so that one module's run takes minutes,
# not hours. The trainer is mutated in its step, skip and resume logic only (mutant-name patterns).
# Prints killed / checked per module and the survivors; writes var/mutation/<module>.json and
# var/mutation/summary.json. MAX_CHILDREN (default 2) parallel mutants. DATABASE_URL_PG as for the tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RIS_JOBS_VENV:-$ROOT/.venv}"
OUT="$ROOT/var/mutation"
MAX_CHILDREN="${MAX_CHILDREN:-2}"
mkdir -p "$OUT"

# module -> "file|pytest selection (';'-separated arguments)|mutant-name patterns (space separated, optional)".
# The selections leave out the slowest tests (dense N×N references, whole training runs) where faster ones check
# the same values, and run the store on SQLite only (its SQL is the same on PostgreSQL).
declare -A MODULES=(
  [losses]="ris_model/losses.py|tests/ris_model/test_loss_values.py;tests/ris_model/test_losses.py;-k;not rank_deficient and not dense_frobenius and not brute_force and not eigenvector_fault|"
  [jobs]="server/store/jobs.py|tests/server/store/test_state_machine_design.py;tests/server/store/test_jobs.py;tests/server/store/test_event_messages.py;tests/server/store/test_job_rows.py;tests/server/store/test_reaper_edges.py;-m;not postgres|"
  [sse]="server/routes/metrics.py|tests/server/routes/test_metrics.py;tests/server/routes/test_metrics_live.py;tests/server/routes/test_metrics_degraded.py;tests/server/routes/test_metrics_sql_reads.py|"
  [checkpoint]="ris_model/train/checkpoint.py|tests/ris_model/train/test_checkpoint.py|"
  [scenes]="ris_model/scenes.py|tests/ris_model/test_scenes.py;tests/ris_model/test_scene_contract.py;tests/ris_model/train/test_distributed.py;tests/ris_model/test_scene_source.py|"
  [trainer]="ris_model/train/trainer.py|tests/ris_model/train/test_trainer.py;tests/ris_model/train/test_resume_exact.py|ris_model.train.trainer.xǁTrainerǁ_train_step__mutmut_* ris_model.train.trainer.xǁTrainerǁ_skip__mutmut_* ris_model.train.trainer.xǁTrainerǁ_load_resume__mutmut_* ris_model.train.trainer.xǁTrainerǁ_setup_phase__mutmut_*"
)
ORDER=(losses jobs sse checkpoint scenes trainer)
[ "$#" -gt 0 ] && ORDER=("$@")

for name in "${ORDER[@]}"; do
  spec="${MODULES[$name]:?unknown module $name (one of: ${!MODULES[*]})}"
  IFS='|' read -r file tests patterns <<<"$spec"
  work="$OUT/$name"
  # KEEP=1 keeps the previous run's results (mutmut re-checks only what changed); by default each run is fresh
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
  mkdir -p "$work"
  (cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$work")
  # this module's settings replace the shared [tool.mutmut] section
  "$VENV/bin/python" - "$work/pyproject.toml" "$file" "$tests" <<'PY'
import json, re, sys
path, target, tests = sys.argv[1], sys.argv[2], sys.argv[3].split(";")
text = open(path, encoding="utf-8").read()
text = re.sub(r"^only_mutate = .*$", f"only_mutate = {json.dumps([target])}", text, flags=re.M)
text = re.sub(r"^pytest_add_cli_args_test_selection = .*$",
              f"pytest_add_cli_args_test_selection = {json.dumps(tests)}", text, flags=re.M)
open(path, "w", encoding="utf-8").write(text)
PY
  echo "== $name: $file  (pytest: ${tests//;/ })" >&2
  start=$(date +%s)
  # shellcheck disable=SC2086  # patterns are globs for mutmut, not for the shell
  (cd "$work" && set -f && "$VENV/bin/mutmut" run --max-children "$MAX_CHILDREN" $patterns >"$OUT/$name.log" 2>&1) || true
  (cd "$work" && set -f && "$VENV/bin/python" "$ROOT/bench/mutation_summary.py" "$name" "$file" \
      "$(( $(date +%s) - start ))" "$OUT/$name.json" $patterns)
done
"$VENV/bin/python" - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"]
(out / "summary.json").write_text(json.dumps(rows, indent=2))
print(f"{'module':<12}{'killed':>8}{'checked':>9}{'score':>8}  survivors")
for r in rows:
    print(f"{r['module']:<12}{r['killed']:>8}{r['checked']:>9}{r['score_pct']:>7.1f}%  {len(r['survivors'])}")
PY
