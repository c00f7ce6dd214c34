"""ris_model.train.trainer: the trainer's rules (SCIENCE.md) on a tiny CPU config with a MemorySink — one optimizer step
per batch, LR per step, epoch loss, no dead parameters, frozen groups, phase hand-over, EMA, the non-finite guard,
and no N×N decomposition on the training path."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from api_schemas import DataConfig, DebugConfig, LossWeights, NonfiniteSummary, SystemConfig, fold_nonfinite
from api_schemas import metrics as keys
from ris_model.errors import NonFiniteAbort
from ris_model.model.network import RisNet, k_from_logits
from ris_model.scenes import SceneSource
from ris_model.train.fault_hooks import DebugHooks
from ris_model.train.hooks import NO_HOOKS, StepHooks
from ris_model.train.sinks import MemorySink
from ris_model.train.trainer import FitResult, Trainer, lr_at, never_stop
from tests.ris_model.conftest import make_model, tiny_config, tiny_phase
from tests.ris_model.fault_plants import FaultPlants
from tests.ris_model.train.steps import count_optimizer_steps


def _fit(config, tmp_path: Path, *, hooks: StepHooks | None = None, model: RisNet | None = None,
         should_stop: Callable[[], Any] = never_stop, resume_from: Path | None = None,
         sink: MemorySink | None = None) -> tuple[FitResult, MemorySink, Trainer]:
    sink = sink or MemorySink()
    if hooks is None:  # a config with a debug section runs with its fault hooks, as in a worker
        hooks = DebugHooks(config.debug) if "debug" in config.model_fields_set else NO_HOOKS
    trainer = Trainer(config, model or make_model(config), sink, "cpu", checkpoint_dir=tmp_path, hooks=hooks)
    return trainer.fit(should_stop, resume_from=resume_from), sink, trainer


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- one optimizer step per batch


@pytest.mark.parametrize("n_train", [64, 56], ids=["divisible", "ragged_last_batch"])
def test_optimizer_steps_equal_batches_per_epoch(tmp_path: Path, n_train: int) -> None:
    config = tiny_config(data=DataConfig(n_train=n_train, n_val=32, batch_size=16),
                         phases=(tiny_phase(epochs=2),))
    per_epoch = math.ceil(n_train / 16)
    sink = MemorySink()
    with count_optimizer_steps() as calls:
        _fit(config, tmp_path, sink=sink)
    assert sink.values(keys.TRAIN_OPTIMIZER_STEPS) == [per_epoch] * 2
    assert sink.values(keys.TRAIN_BATCHES) == [per_epoch] * 2
    assert len(calls) == 2 * per_epoch, "optimizer.step() calls counted by a step post-hook"


def test_one_step_per_epoch_fault_is_caught_by_optimizer_step_count(tmp_path: Path) -> None:
    config = tiny_config(phases=(tiny_phase(epochs=2),))
    with count_optimizer_steps() as calls:
        _, sink, _ = _fit(config, tmp_path, hooks=FaultPlants(one_step_per_epoch=True))
    assert sink.values(keys.TRAIN_OPTIMIZER_STEPS) == [1, 1]
    assert sink.values(keys.TRAIN_BATCHES) == [4, 4]
    assert len(calls) == 2


# ---------------------------------------------------------------- LR per step, epoch loss


def test_lr_is_set_every_step_per_lr_at(tmp_path: Path) -> None:
    # no warm-up: lr_at's warm-up ends on the peak and the cosine starts there, so two steps would share it
    phase = tiny_phase(epochs=2, schedule="cosine", warmup_fraction=0.0, lr=1e-3)
    config = tiny_config(phases=(phase,))
    used: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: used.append(opt.param_groups[0]["lr"]))
    try:
        _, sink, _ = _fit(config, tmp_path)
    finally:
        handle.remove()
    expected = [lr_at(phase, i, 8) for i in range(8)]
    assert sink.values(keys.TRAIN_LR) == pytest.approx(expected, rel=1e-12)
    assert used == pytest.approx(expected, rel=1e-12), "the LR the optimizer actually stepped with"
    assert all(a != b for a, b in zip(expected, expected[1:], strict=False)), "the schedule changes every step"


def test_lr_at_warms_up_then_decays_to_floor() -> None:
    phase = tiny_phase(schedule="cosine", warmup_fraction=0.1, lr=1.0)
    lrs = [lr_at(phase, i, 100) for i in range(100)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lr_at(phase, 100, 100) == pytest.approx(0.1), "cosine ends at 10 % of the peak"


def test_epoch_loss_is_mean_of_step_losses(tmp_path: Path) -> None:
    config = tiny_config(phases=(tiny_phase(epochs=2),))
    _, sink, _ = _fit(config, tmp_path)
    step_losses = [(p.epoch, p.value) for p in sink.points if p.key == keys.TRAIN_LOSS]
    epoch_losses = sink.values(keys.TRAIN_EPOCH_LOSS)
    assert sink.values(keys.TRAIN_NONFINITE_SKIPPED) == [0, 0]
    for epoch, epoch_loss in enumerate(epoch_losses, start=1):
        losses = [v for e, v in step_losses if e == epoch]
        assert len(losses) == 4
        assert epoch_loss == pytest.approx(sum(losses) / 4, rel=1e-12, abs=0)


# ---------------------------------------------------------------- dead parameters, frozen groups


@pytest.mark.parametrize("architecture", ["seed_cov"])
def test_joint_phase_with_all_terms_updates_every_parameter(tmp_path: Path, architecture: str) -> None:
    config = tiny_config(architecture=architecture)  # one joint phase, every loss weight > 0
    result, _, _ = _fit(config, tmp_path)
    assert result.never_updated == []


def test_unused_head_fault_appears_in_never_updated(tmp_path: Path) -> None:
    result, _, _ = _fit(tiny_config(), tmp_path, hooks=FaultPlants(unused_head=True))
    assert set(result.never_updated) == {"k_head.unused.weight", "k_head.unused.bias"}


def _frozen_run(tmp_path: Path, hooks: StepHooks | None = None) -> tuple[dict, dict, RisNet]:
    config = tiny_config(phases=(tiny_phase(frozen_groups=("backbone", "k_head")),))
    model = make_model(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _fit(config, tmp_path, model=model, hooks=hooks)
    return before, {n: p.detach().clone() for n, p in model.named_parameters()}, model


def test_frozen_groups_do_not_change(tmp_path: Path) -> None:
    before, after, model = _frozen_run(tmp_path)
    for group, params in model.param_groups().items():
        names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
        changed = [n for n in names if not torch.equal(before[n], after[n])]
        if group in ("backbone", "k_head"):
            assert changed == [], f"frozen {group} changed: {changed}"
        else:
            assert changed, f"trainable {group} did not change"


def test_frozen_still_moves_fault_is_caught(tmp_path: Path) -> None:
    before, after, model = _frozen_run(tmp_path, hooks=FaultPlants(frozen_still_moves="k_head"))
    names = [n for n, _ in model.named_parameters() if n.startswith("k_head.")]
    assert any(not torch.equal(before[n], after[n]) for n in names)


# ---------------------------------------------------------------- phases and EMA


def test_phase_two_starts_from_phase_one_checkpoint_weights(tmp_path: Path) -> None:
    # phase 1 keeps an EMA, so its result (the EMA weights) differs from its raw weights
    config = tiny_config(phases=(tiny_phase("geom", ema_decay=0.5), tiny_phase("joint")))
    model = make_model(config)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    trainer_ref: list[Trainer] = []

    def capture(module: torch.nn.Module, args: Any) -> None:
        if module.training and trainer_ref[0].pos.phase_index == 1 and "start" not in seen:
            seen["start"] = _state(module)

    model.register_forward_pre_hook(capture)
    sink = MemorySink()
    trainer = Trainer(config, model, sink, "cpu", checkpoint_dir=tmp_path)
    trainer_ref.append(trainer)
    trainer.fit()
    saved = torch.load(tmp_path / "geom.pt", weights_only=True)
    assert saved["eval_weights"] == "ema"
    assert seen["start"].keys() == saved["eval_model"].keys()
    for name, value in saved["eval_model"].items():
        assert torch.equal(seen["start"][name], value), f"phase 2 starts from phase 1's final weights: {name}"
    for name, value in saved["model"].items():
        assert torch.equal(value, saved["eval_model"][name]), f"the model holds the EMA weights it hands over: {name}"


def test_ema_validated_weights_are_saved_weights(tmp_path: Path) -> None:
    config = tiny_config(phases=(tiny_phase(ema_decay=0.6, epochs=2),))
    _, sink, _ = _fit(config, tmp_path)
    last_info = [c for c in sink.checkpoints if c.name == "joint-last"][-1]
    last = torch.load(last_info.path, weights_only=True)
    assert last["eval_weights"] == "ema"
    assert last["ema"].keys() == last["eval_model"].keys()
    for name in last["ema"]:
        assert torch.equal(last["ema"][name], last["eval_model"][name]), name
    assert any(not torch.equal(last["ema"][n], last["model"][n]) for n in last["ema"]), "EMA ≠ raw weights"
    # re-validate the saved weights on the val pool: the same K accuracy as the trainer reported
    model = make_model(config)
    model.load_state_dict(last["eval_model"])
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for batch in SceneSource(config.system, config.data, "cpu").val_batches():
            out = model(batch.y, batch.H, batch.codes, batch.snr_db)
            correct += int((k_from_logits(out.k_logits) == batch.k).sum())
            n += len(batch)
    assert sink.values(keys.VAL_K_ACC)[-1] == correct / n


# ---------------------------------------------------------------- non-finite guard


def _nan_config(n_steps: int, max_consecutive: int = 20, nan_from_step: int = 0):
    return tiny_config(phases=(tiny_phase(epochs=2, max_consecutive_nonfinite=max_consecutive),),
                       debug=DebugConfig(nan_loss_term="k", nan_from_step=nan_from_step, nan_n_steps=n_steps))


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FitResult, MemorySink]:
    """NaN in the K term at global batches 1, 2, 3 (all in epoch 1 of 2); shared by the tests below."""
    with torch.random.fork_rng(devices=[]):
        result, sink, _ = _fit(_nan_config(3, nan_from_step=1), tmp_path_factory.mktemp("nan_run"))
    return result, sink


def test_nan_loss_term_skips_exactly_n_steps_and_training_finishes(nan_run) -> None:
    result, sink = nan_run
    assert result.stopped is None and result.final_checkpoint is not None
    assert result.nonfinite_total == 3
    cause_steps = [p.step for p in sink.points if p.key == keys.NONFINITE_CAUSE_PREFIX + "loss"]
    term_steps = [p.step for p in sink.points if p.key == keys.NONFINITE_TERM_PREFIX + "k"]
    assert len(cause_steps) == 3 and cause_steps == term_steps
    assert cause_steps == [cause_steps[0], cause_steps[0] + 1, cause_steps[0] + 2], "three consecutive steps"
    assert not [p for p in sink.points if p.key.startswith(keys.NONFINITE_GROUP_PREFIX)], "a loss skip has no groups"
    assert sink.values(keys.TRAIN_NONFINITE_SKIPPED) == [3, 0]
    assert sink.values(keys.TRAIN_OPTIMIZER_STEPS) == [1, 4]


def test_nonfinite_points_carry_the_step_of_the_skipped_batch(nan_run) -> None:
    # a skipped batch has a train/lr point but no train/loss point; its nonfinite events must share that step,
    # so that a reader can join events and per-step series (one step number per batch in the metric stream)
    _, sink = nan_run
    lr_steps = {p.step for p in sink.points if p.key == keys.TRAIN_LR}
    loss_steps = {p.step for p in sink.points if p.key == keys.TRAIN_LOSS}
    skipped = sorted(lr_steps - loss_steps)
    assert [p.step for p in sink.points if p.key == keys.NONFINITE_CAUSE_PREFIX + "loss"] == skipped


def test_nan_forever_aborts_with_attribution(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteAbort) as info:
        _fit(_nan_config(0, max_consecutive=5), tmp_path)
    message = str(info.value)
    assert "5 consecutive non-finite steps" in message and "'k'" in message and "cause loss" in message
    att = info.value.attribution
    # 4 batches per epoch: the 5th consecutive skip is batch 0 of epoch 2 (global batch index 4)
    assert (att.phase, att.epoch, att.cause, att.loss_terms, att.param_groups) == ("joint", 2, "loss", ["k"], [])


def test_fold_nonfinite_summarizes_skip_points(nan_run) -> None:
    _, sink = nan_run
    summary = fold_nonfinite(NonfiniteSummary(), sink.points)
    assert summary.total == 3
    assert summary.by_cause == {"loss": 3} and summary.by_loss_term == {"k": 3} and summary.by_phase == {"joint": 3}
    assert summary.by_param_group == {}
    steps = [p.step for p in sink.points if p.key == keys.NONFINITE_CAUSE_PREFIX + "loss"]
    assert summary.last is not None
    assert (summary.last.step, summary.last.cause, summary.last.loss_terms) == (max(steps), "loss", ["k"])


def test_eigenvector_fault_is_skipped_as_grad_and_attributed(tmp_path: Path) -> None:
    result, sink, _ = _fit(tiny_config(), tmp_path, hooks=FaultPlants(eigvec_loss=True))
    assert result.nonfinite_total > 0, "the planted eigenvector loss must make the guard skip steps"
    assert {p.key for p in sink.points if p.key.startswith(keys.NONFINITE_TERM_PREFIX)} == {
        keys.NONFINITE_TERM_PREFIX + "eigvec_align"}


# ---------------------------------------------------------------- no N×N decomposition on the training path

_DECOMPOSITIONS = ("eigh", "eigvalsh", "eig", "eigvals", "svd", "svdvals", "qr", "cholesky", "cholesky_ex", "lu",
                   "lu_factor", "lu_factor_ex", "ldl_factor", "ldl_factor_ex", "inv", "inv_ex", "pinv", "solve",
                   "solve_ex", "lstsq", "det", "slogdet", "matrix_rank", "matrix_exp")


@pytest.fixture
def linalg_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, ...]]]:
    """Records (name, input shape) of every torch.linalg decomposition (and the legacy torch.* aliases)."""
    calls: list[tuple[str, tuple[int, ...]]] = []

    def wrap(name: str, fn: Callable) -> Callable:
        def recorder(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else next(iter(kwargs.values()))
            calls.append((name, tuple(first.shape)))
            return fn(*args, **kwargs)
        return recorder

    for name in _DECOMPOSITIONS:
        if hasattr(torch.linalg, name):
            monkeypatch.setattr(torch.linalg, name, wrap(f"linalg.{name}", getattr(torch.linalg, name)))
    for name in ("svd", "qr", "cholesky", "inverse", "pinverse", "det", "logdet", "slogdet", "lobpcg"):
        if hasattr(torch, name):
            monkeypatch.setattr(torch, name, wrap(name, getattr(torch, name)))
    return calls


def _large(calls: list[tuple[str, tuple[int, ...]]], n: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, shape) for name, shape in calls if len(shape) >= 2 and min(shape[-2:]) >= n]


def test_training_step_decomposes_no_n_by_n_matrix(tmp_path: Path, linalg_calls) -> None:
    system = SystemConfig()  # N = 144, K_MAX = 5, M = 16
    config = tiny_config(system=system, data=DataConfig(n_train=16, n_val=16, batch_size=16))
    _fit(config, tmp_path)
    assert linalg_calls, "the recorder saw the K×K and M×M eigvalsh calls"
    assert _large(linalg_calls, system.n_ris) == []
    small = max(system.k_max, system.n_bs_antennas)
    assert all(max(shape[-2:]) <= small for _, shape in linalg_calls), sorted(set(linalg_calls))


def test_linalg_recorder_catches_eigenvector_fault(tmp_path: Path, linalg_calls) -> None:
    config = tiny_config()  # N = 16
    _fit(config, tmp_path, hooks=FaultPlants(eigvec_loss=True))
    assert _large(linalg_calls, config.system.n_ris), "the planted N×N eigh is recorded (the check can fail)"


# ---------------------------------------------------------------- resume after the last phase


def test_resume_from_last_phase_checkpoint_writes_final(tmp_path: Path) -> None:
    # a worker that died between `<last phase>.pt` and `final.pt` resumes from the newest checkpoint it reported
    config = tiny_config(phases=(tiny_phase("geom", loss_weights=LossWeights()), tiny_phase("joint")))
    _, first, _ = _fit(config, tmp_path / "a")
    assert [c.name for c in first.checkpoints][-2:] == ["joint", "final"]
    result, _, _ = _fit(config, tmp_path / "b", resume_from=tmp_path / "a" / "joint.pt")
    assert result.final_checkpoint is not None
    final_a = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    final_b = torch.load(result.final_checkpoint.path, weights_only=True)
    for name, value in final_a["eval_model"].items():
        assert torch.equal(final_b["eval_model"][name], value), name
