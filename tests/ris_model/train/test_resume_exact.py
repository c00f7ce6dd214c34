"""Resume continues from the exact step (SCIENCE.md, "The trainer"): a run stopped mid-epoch and resumed by a fresh
trainer — built on a model of another seed, with dropout on and the global RNG reseeded — runs exactly the remaining
steps and ends with the weights, optimizer state, EMA and epoch metrics of the uninterrupted run, bit for bit
on the CPU.

Each thing that the resume must restore is made to differ if it is not restored: the fresh model's weights
(another seed), the dropout masks (the global RNG is reseeded before the resume), the optimizer and EMA state
(Adam moments, EMA on), the position (a second phase and a stop in the middle of an epoch), and the epoch's
running statistics (the interrupted epoch's train loss is compared).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from api_schemas import LossWeights, ModelConfig
from api_schemas import metrics as keys
from ris_model.train import checkpoint as ckpt
from ris_model.train.sinks import MemorySink
from ris_model.train.trainer import FitResult, StopReason, Trainer
from tests.ris_model.conftest import make_model, tiny_config, tiny_phase
from tests.ris_model.train.steps import count_optimizer_steps

BATCHES_PER_EPOCH = 4  # tiny_config: n_train 64, batch 16
STOP_AFTER_STEPS = 7  # inside the second phase's first epoch: 4 (geom) + 3
TOTAL_STEPS = 4 + 2 * BATCHES_PER_EPOCH  # geom 1 epoch, joint 2 epochs


def _config():  # type: ignore[no-untyped-def]
    return tiny_config(
        model=ModelConfig(architecture="unrolled_omp", d_model=16, n_layers=1, n_heads=2, dropout=0.3),
        phases=(tiny_phase("geom", loss_weights=LossWeights(lam_cov=0.5, lam_k=0.0, lam_aux=1.0)),
                tiny_phase("joint", epochs=2, ema_decay=0.9)),
    )


def _stop_after(n_steps: int) -> Callable[[], StopReason | None]:
    """A should_stop that asks to stop before step `n_steps + 1` (it is polled once before every step)."""
    polls = [0]

    def should_stop() -> StopReason | None:
        polls[0] += 1
        return "cancel" if polls[0] > n_steps else None

    return should_stop


def _run(config, directory: Path, *, model_seed: int, stop_after: int | None = None,  # type: ignore[no-untyped-def]
         resume_from: Path | None = None) -> tuple[FitResult, MemorySink, int]:
    sink = MemorySink()
    trainer = Trainer(config, make_model(config, seed=model_seed), sink, "cpu", checkpoint_dir=directory)
    should_stop = _stop_after(stop_after) if stop_after is not None else (lambda: None)
    with count_optimizer_steps() as steps:
        result = trainer.fit(should_stop, resume_from=resume_from)
    return result, sink, len(steps)


def _steps_logged(sink: MemorySink, key: str = keys.TRAIN_LOSS) -> list[int]:
    return [p.step for p in sink.points if p.key == key]


def _epoch_values(sink: MemorySink, key: str) -> dict[tuple[str, int], float]:
    return {(p.phase, p.epoch): p.value for p in sink.points if p.key == key}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[FitResult, MemorySink, int]]:
    config = _config()
    root = tmp_path_factory.mktemp("resume")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        whole = _run(config, root / "whole", model_seed=0)
        torch.manual_seed(0)
        stopped = _run(config, root / "stopped", model_seed=0, stop_after=STOP_AFTER_STEPS)
        assert stopped[0].stopped == "cancel" and stopped[0].last_checkpoint is not None
        torch.manual_seed(987654)  # the resumed process's RNG has nothing to do with the stopped one's
        resumed = _run(config, root / "resumed", model_seed=1,
                       resume_from=Path(stopped[0].last_checkpoint.path))
    return {"whole": whole, "stopped": stopped, "resumed": resumed}


def test_stop_checkpoint_records_the_position_of_the_next_step(runs) -> None:  # type: ignore[no-untyped-def]
    result, _, steps = runs["stopped"]
    assert (result.global_step, steps) == (STOP_AFTER_STEPS, STOP_AFTER_STEPS)
    state = ckpt.load_checkpoint(Path(result.last_checkpoint.path), map_location="cpu")
    assert state[ckpt.POSITION_KEY] == {"phase_index": 1, "phase": "joint", "epoch": 0, "batch": 3,
                                        "global_step": STOP_AFTER_STEPS, "optimizer_phase": "joint",
                                        "world_size": 1}


def test_resume_runs_exactly_the_remaining_steps(runs) -> None:  # type: ignore[no-untyped-def]
    result, sink, steps = runs["resumed"]
    assert result.stopped is None
    assert steps == TOTAL_STEPS - STOP_AFTER_STEPS
    assert _steps_logged(sink) == list(range(STOP_AFTER_STEPS + 1, TOTAL_STEPS + 1))
    assert result.global_step == runs["whole"][0].global_step == TOTAL_STEPS


def test_resumed_final_state_equals_the_uninterrupted_run(runs) -> None:  # type: ignore[no-untyped-def]
    whole = ckpt.load_checkpoint(Path(runs["whole"][0].final_checkpoint.path), map_location="cpu")
    resumed = ckpt.load_checkpoint(Path(runs["resumed"][0].final_checkpoint.path), map_location="cpu")
    for part in (ckpt.MODEL_KEY, ckpt.EMA_KEY, "eval_model"):
        assert whole[part].keys() == resumed[part].keys()
        for name, value in whole[part].items():
            assert torch.equal(resumed[part][name], value), (part, name)
    moments_whole = whole[ckpt.OPTIMIZER_KEY]["state"]
    moments_resumed = resumed[ckpt.OPTIMIZER_KEY]["state"]
    assert moments_whole.keys() == moments_resumed.keys()
    for index, moments in moments_whole.items():
        for name, value in moments.items():
            assert torch.equal(moments_resumed[index][name], value), (index, name)
    assert torch.equal(resumed[ckpt.RNG_KEY]["torch"], whole[ckpt.RNG_KEY]["torch"])
    assert resumed[ckpt.POSITION_KEY] == whole[ckpt.POSITION_KEY]
    assert resumed[ckpt.COUNTERS_KEY] == whole[ckpt.COUNTERS_KEY]


def test_resumed_epoch_metrics_equal_the_uninterrupted_run(runs) -> None:  # type: ignore[no-untyped-def]
    _, whole, _ = runs["whole"]
    _, resumed, _ = runs["resumed"]
    for key in (keys.TRAIN_EPOCH_LOSS, keys.TRAIN_K_ACC, keys.TRAIN_BATCHES, keys.TRAIN_OPTIMIZER_STEPS,
                keys.TRAIN_DELTA_PARAM, keys.VAL_LOSS, keys.VAL_K_ACC):
        expected = {at: v for at, v in _epoch_values(whole, key).items() if at[0] == "joint"}
        assert _epoch_values(resumed, key) == expected, key
    # the interrupted epoch counts its batches before and after the stop
    assert _epoch_values(resumed, keys.TRAIN_BATCHES)[("joint", 1)] == BATCHES_PER_EPOCH
    per_step_whole = {p.step: p.value for p in whole.points if p.key == keys.TRAIN_LOSS}
    per_step_resumed = {p.step: p.value for p in resumed.points if p.key == keys.TRAIN_LOSS}
    assert per_step_resumed == {s: v for s, v in per_step_whole.items() if s > STOP_AFTER_STEPS}


def test_resume_of_another_config_is_refused(runs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ris_model.errors import CheckpointError

    other = tiny_config(phases=(tiny_phase("joint", epochs=3),))
    trainer = Trainer(other, make_model(other), MemorySink(), "cpu", checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="written for another config"):
        trainer.fit(resume_from=Path(runs["stopped"][0].last_checkpoint.path))
