"""Data-parallel training through the worker's launcher, on the CPU: this test process is rank 0 and one real
`python -m worker.rank` child is rank 1, joined by gloo (worker/launcher.py, ris_model.train.distributed).

Tolerance of the equivalence test: two processes with batch B average two per-process mean gradients, one
process with batch 2B takes one mean over 2B scenes; the sums run in another order, so the float32 gradients
differ by rounding (~1e-7 relative). AdamW divides each gradient by its own running scale (+ eps 1e-8), so for
the few weights whose gradient is near zero that rounding becomes a visible part of their step. Measured on
this run (8 steps, lr 1e-3): max |Δw| 8.3e-5 on 10 of 3,833 weights, ‖Δw‖ / ‖w_end − w_start‖ = 9.4e-4.
The test asks ‖Δw‖ / ‖w_end − w_start‖ < REL_TOL and max |Δw| < lr. Two processes that see other scenes
(the fresh stream instead of the pool's shares) give 0.75 and 6.8e-3 on 3,453 weights.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas import LossWeights, TrainingJobConfig
from api_schemas import metrics as keys
from ris_model.errors import CheckpointError
from ris_model.losses import LossResult, weighted_total
from ris_model.model.network import ModelOutput, RisNet
from ris_model.scenes import SceneBatch
from ris_model.train import checkpoint as ckpt
from ris_model.train.hooks import NoHooks, StepHooks
from ris_model.train.jobs import FitResult, StopReason, never_stop, run_training_job
from ris_model.train.sinks import MemorySink
from tests.factories import tiny_config
from worker.launcher import RankLost, RankSpec, rank_group
from worker.tasks import training_hooks

#: Largest ‖w_2proc − w_1proc‖ / ‖w_end − w_start‖ accepted (see the module docstring).
REL_TOL = 1e-2
#: Largest |w_2proc − w_1proc| accepted for any weight: less than one AdamW step (the phase's lr).
ATOL_WEIGHTS = 1e-3

pytestmark = pytest.mark.distributed


def ddp_config(*, batch_size: int, epochs: int = 2, **data: Any) -> dict[str, Any]:
    """tiny_config() as a training job whose loss is a mean over scenes (covariance NMSE and K cross-entropy:
    the localization term is a mean over each process's own sources), on a fixed pool of 64 scenes."""
    config = {k: v for k, v in tiny_config().items() if k in TrainingJobConfig.model_fields}
    config["data"] = {**config["data"], "n_train": 64, "batch_size": batch_size,
                      "fresh_train_each_epoch": False, **data}
    config["phases"][0] |= {"epochs": epochs, "loss_weights": {"lam_cov": 0.1, "lam_K": 1.5, "lam_aux": 0.0}}
    return config


def train(config: dict[str, Any], checkpoint_dir: Path, *, world_size: int, label: str = "test",
          should_stop: Callable[[], StopReason | None] = never_stop, resume_from: Path | None = None,
          hooks: StepHooks | None = None) -> tuple[FitResult, MemorySink]:
    """Run the job as rank 0 of `world_size` CPU processes; returns rank 0's result and points. `hooks` are
    rank 0's alone (the other ranks build theirs from the config, as on a worker)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    spec = RankSpec(label=label, kind="training", config=config, checkpoint_dir=str(checkpoint_dir),
                    resume_from=str(resume_from) if resume_from else None, device="cpu", world_size=world_size)
    sink = MemorySink()
    job = TrainingJobConfig.model_validate(config)
    with rank_group(spec) as group:
        result = run_training_job(job, sink=sink, checkpoint_dir=checkpoint_dir, device=str(group.device),
                                  resume_from=resume_from, should_stop=should_stop, dist=group.context,
                                  hooks=hooks if hooks is not None else training_hooks(job, config))
    return result, sink


def final_weights(result: FitResult) -> dict[str, torch.Tensor]:
    assert result.final_checkpoint is not None
    return ckpt.load_checkpoint(Path(result.final_checkpoint.path), map_location="cpu")[ckpt.MODEL_KEY]


def initial_weights(config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights run_training_job starts from (RisNet initialised after torch.manual_seed(data.seed))."""
    job = TrainingJobConfig.model_validate(config)
    torch.manual_seed(job.data.seed)
    return RisNet(job.system, job.model).state_dict()


def flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([w.float().flatten() for w in weights.values() if w.dtype.is_floating_point])


def rank_pids(label: str) -> list[int]:
    """Live `python -m worker.rank --job <label>` processes (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"worker.rank" in cmdline and label.encode() in cmdline and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


def test_two_processes_train_the_weights_of_one_process_with_the_doubled_batch(tmp_path: Path) -> None:
    one, one_sink = train(ddp_config(batch_size=16), tmp_path / "one", world_size=1)
    two, two_sink = train(ddp_config(batch_size=8), tmp_path / "two", world_size=2)
    assert one.global_step == two.global_step == 8  # 4 steps of 16 scenes per epoch either way
    start, a, b = (flat(w) for w in (initial_weights(ddp_config(batch_size=16)), final_weights(one),
                                       final_weights(two)))
    rel = float((a - b).norm() / (a - start).norm())
    worst = float((a - b).abs().max())
    assert rel < REL_TOL and worst < ATOL_WEIGHTS, f"‖Δw‖ rel {rel:.3g}, max |Δw| {worst:.3g}"
    # rank 0 reports totals over both processes: the same epoch metrics as the single process
    for key in (keys.TRAIN_EPOCH_LOSS, keys.TRAIN_K_ACC, keys.VAL_LOSS, keys.VAL_K_ACC):
        assert two_sink.values(key) == pytest.approx(one_sink.values(key), rel=1e-4, abs=1e-5), key
    assert two_sink.values(keys.TRAIN_BATCHES) == [4.0, 4.0]
    assert two_sink.values(keys.TRAIN_LOSS) == pytest.approx(one_sink.values(keys.TRAIN_LOSS), rel=1e-4)


def test_a_stopped_two_process_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    config = ddp_config(batch_size=8, epochs=2)
    k_only = config["phases"][0]
    geom = {**k_only, "name": "geom", "frozen_groups": ["k_head"]}  # a new DDP wrapper at each phase
    config["phases"] = [geom, k_only]
    whole, _ = train(config, tmp_path / "whole", world_size=2)
    polls = iter(range(100))

    def stop_mid_epoch() -> StopReason | None:  # rank 0 is asked before each step: stop in phase 2, epoch 1
        return "cancel" if next(polls) == 10 else None

    stopped, _ = train(config, tmp_path / "resumed", world_size=2, should_stop=stop_mid_epoch)
    assert stopped.stopped == "cancel" and stopped.global_step == 10
    assert stopped.last_checkpoint is not None
    resumed, _ = train(config, tmp_path / "resumed", world_size=2, resume_from=Path(stopped.last_checkpoint.path))
    assert resumed.global_step == whole.global_step == 16
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same operations in the same order: bit for bit


class NanOnThisRank(NoHooks):
    """The `k` term is NaN at step `step`, on the rank that holds these hooks only."""

    def __init__(self, step: int) -> None:
        self.step = step

    def runs_eagerly(self, step: int) -> bool:
        return step == self.step

    def loss(self, res: LossResult, out: ModelOutput, batch: SceneBatch, weights: LossWeights,
             step: int) -> LossResult:
        if step != self.step:
            return res
        terms = {**res.terms, "k": res.terms["k"] * float("nan")}
        return LossResult(total=weighted_total(terms, weights, res.total.device), terms=terms,
                          assignment=res.assignment)


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank_and_counts_once(tmp_path: Path) -> None:
    everywhere = ddp_config(batch_size=8, epochs=1)
    everywhere["debug"] = {"nan_loss_term": "k", "nan_from_step": 2, "nan_n_steps": 1}
    all_ranks, all_sink = train(everywhere, tmp_path / "all", world_size=2)
    rank_0, sink_0 = train(ddp_config(batch_size=8, epochs=1), tmp_path / "one", world_size=2,
                           hooks=NanOnThisRank(step=2))
    for result, sink in ((all_ranks, all_sink), (rank_0, sink_0)):
        assert result.nonfinite_total == 1  # one skipped step, not one per rank
        assert sink.values(keys.TRAIN_NONFINITE_SKIPPED) == [1.0]
        assert sink.values(keys.TRAIN_OPTIMIZER_STEPS) == [3.0]
        assert sink.values(keys.NONFINITE_CAUSE_PREFIX + "loss") == [1.0]
        assert sink.values(keys.NONFINITE_TERM_PREFIX + "k") == [1.0]
    a, b = final_weights(all_ranks), final_weights(rank_0)
    # rank 1's loss was finite, yet it skipped the step too: otherwise the weights would part
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_number_of_processes_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = ddp_config(batch_size=8, epochs=1)
    done, _ = train(config, tmp_path / "two", world_size=2)
    assert done.last_checkpoint is not None
    with pytest.raises(CheckpointError, match=r"written by a run of 2 training processes and this run has 1.*"
                                              r"resources.gpus = 2"):
        train(config, tmp_path / "one", world_size=1, resume_from=Path(done.last_checkpoint.path))


def test_a_rank_that_dies_ends_the_run_with_rank_lost_and_leaves_no_process(tmp_path: Path) -> None:
    config = ddp_config(batch_size=8, epochs=50)
    label = f"dies-{os.getpid()}"
    killed: list[int] = []

    def kill_rank_1_once_running() -> StopReason | None:
        if not killed:
            pids = rank_pids(label)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
        return None

    with pytest.raises(RankLost, match=r"rank 1 of 2 was killed by SIGKILL"):
        train(config, tmp_path / "ckpt", world_size=2, label=label, should_stop=kill_rank_1_once_running)
    assert killed and rank_pids(label) == []


def test_leaving_the_group_on_an_error_of_rank_0_ends_every_other_rank(tmp_path: Path) -> None:
    config = ddp_config(batch_size=8, epochs=50)
    label = f"errs-{os.getpid()}"
    seen: list[int] = []

    def fail_once_rank_1_runs() -> StopReason | None:
        seen.extend(rank_pids(label))
        if seen:
            raise RuntimeError("rank 0 fails")
        return None

    with pytest.raises(RuntimeError, match="rank 0 fails"):
        train(config, tmp_path / "ckpt", world_size=2, label=label, should_stop=fail_once_rank_1_runs)
    assert seen and rank_pids(label) == []
