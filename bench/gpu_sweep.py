"""A hyper-parameter sweep on one GPU, in process (no Redis, no Celery): the joint phase's learning rate, the
model width and the look pass's refinement rounds of a short training config, TPE with ASHA pruning on val/k_acc,
next to the same short config with its default values.

    python3 bench/gpu_sweep.py [--device cuda] [--trials 10] [--out var/bench-gpu-sweep.json]

Each trial is built and judged by the same pieces a `sweep` job uses: `SweepJobConfig` (space checked against
the base config), `SweepJobConfig.trial_config`, the Optuna study of `worker.study` (sampler, pruner,
distributions; stored in a SQLite file beside the JSON, so `optuna-dashboard sqlite:///<file>` opens it), and
`worker.trial.TrialReporter`, which reports val/k_acc at every epoch end and stops a trial through the trainer's
`should_stop` when ASHA prunes it; the sweep job's driver tells the study the same outcomes (last objective value,
or PRUNED). Trials run one after another (a one-GPU sweep with max_concurrent 1).

Sized for ~6 minutes on one H200: 7 epochs (geom 2, k_only 1, joint 4) of 25 batches × 4,096 fresh scenes each,
8,192 validation scenes. Prints a table and writes JSON. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_schemas import CheckpointInfo, MetricPoint, SweepJobConfig, TrainingJobConfig  # noqa: E402
from api_schemas.config import _default_training_phases  # noqa: E402
from api_schemas.metrics import VAL_K_ACC  # noqa: E402
from worker.study import distributions, open_study  # noqa: E402
from worker.sweep import param_importances  # noqa: E402
from worker.trial import TrialReporter  # noqa: E402


def short_config() -> dict[str, Any]:
    """The default training job, shortened: every phase's epochs cut (2/1/4), 25 batches of 4,096 per epoch."""
    geom, k_only, joint = _default_training_phases()
    phases = [geom.model_copy(update={"epochs": 2}), k_only.model_copy(update={"epochs": 1}),
              joint.model_copy(update={"epochs": 4})]
    config = TrainingJobConfig(phases=tuple(phases),
                               data=TrainingJobConfig().data.model_copy(update={"n_train": 25 * 4096}))
    return config.model_dump(mode="json")


def sweep_config(n_trials: int) -> SweepJobConfig:
    return SweepJobConfig.model_validate({
        "base": {"kind": "training", "config": short_config()},
        "space": {
            "phases.2.lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
            "model.d_model": {"type": "categorical", "choices": [64, 128, 256]},
            "model.look_refine_rounds": {"type": "int", "low": 1, "high": 5},
        },
        "objective": {"metric": VAL_K_ACC, "direction": "maximize"},
        "n_trials": n_trials, "max_concurrent": 1, "sampler": "tpe",
        # the first rung after the k_only phase (epoch 3): k_acc means nothing while the K-head is frozen
        "pruner": {"type": "asha", "min_resource": 3, "reduction_factor": 3}, "seed": 0,
    })


class _Sink:
    """Keeps the objective's values and forwards every point to the trial's reporter (if any)."""

    def __init__(self, reporter: TrialReporter | None) -> None:
        self.reporter, self.values = reporter, []  # type: TrialReporter | None, list[float]

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        self.values += [p.value for p in points if p.key == VAL_K_ACC]
        if self.reporter is not None:
            self.reporter.log_metrics(points)

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def close(self) -> None:
        pass


def train(config: dict[str, Any], device: str, reporter: TrialReporter | None) -> tuple[Any, list[float], float]:
    from ris_model.train.jobs import run_training_job
    from ris_model.train.trainer import never_stop

    sink = _Sink(reporter)
    should_stop = reporter.should_stop(never_stop) if reporter is not None else never_stop
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_training_job(TrainingJobConfig.model_validate(config), sink=sink, checkpoint_dir=Path(tmp),
                                  device=device, should_stop=should_stop)
    return result, sink.values, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("var/bench-gpu-sweep.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from optuna.trial import TrialState

    started = time.perf_counter()
    sweep = sweep_config(args.trials)
    _, default_values, default_s = train(sweep.base.full_config(), args.device, None)
    print(f"default short config: val/k_acc {default_values[-1]:.4f} ({default_s:.0f} s)", flush=True)

    database = args.out.with_suffix(".sqlite")
    database.unlink(missing_ok=True)
    study = open_study(f"sqlite:///{database}", "bench", sweep, create=True)
    rows = []
    for _ in range(sweep.n_trials):
        trial = study.ask(distributions(sweep))
        config = sweep.trial_config(trial.params)
        phase_epochs = [(p["name"], p["epochs"]) for p in config["phases"]]
        reporter = TrialReporter(trial, metric=VAL_K_ACC, phase_epochs=phase_epochs)
        result, values, seconds = train(config, args.device, reporter)
        if result.stopped == "cancel" and reporter.pruned_at is not None:
            study.tell(trial.number, state=TrialState.PRUNED)
            state = "PRUNED"
        else:
            study.tell(trial.number, values[-1])
            state = "COMPLETE"
        rows.append({"number": trial.number, "params": trial.params, "state": state,
                     "val_k_acc": values[-1] if values else None, "epochs": len(values), "seconds": seconds})
        print(f"trial {trial.number:2d} {state:8s} val/k_acc {values[-1]:.4f} after {len(values)} epochs "
              f"({seconds:.0f} s) {trial.params}", flush=True)
    best = study.best_trial
    complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    out = {
        "device": args.device, "trials": rows, "default_val_k_acc": default_values[-1], "default_seconds": default_s,
        "best": {"number": best.number, "val_k_acc": best.value, "params": best.params},
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "importances": param_importances(study, complete_trials=complete),
        "total_seconds": time.perf_counter() - started, "study": str(database),
    }
    print(f"best trial {best.number}: val/k_acc {best.value:.4f} vs default {default_values[-1]:.4f}; "
          f"{out['pruned']} of {len(rows)} pruned; importances {out['importances']}; "
          f"{out['total_seconds']:.0f} s in all")
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
