"""ris_model.diagnose.checks: each planted fault (tests.ris_model.fault_plants) makes the right check FAIL and
name its cause; a healthy run passes every check. Runs real tiny diagnostic jobs on the CPU (about a second each)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas import DataConfig, DebugConfig, DiagnosticJobConfig, LossWeights, MetricPoint, ModelConfig, PhaseConfig
from api_schemas import metrics as keys
from api_schemas.config import DiagnosticChecksConfig
from ris_model.diagnose.checks import (
    above_chance_bar,
    check_identifiability,
    check_learning,
    check_steps_and_lr,
    label_shift,
    learning_bar,
    reference_training_steps,
)
from ris_model.errors import NonFiniteAbort
from ris_model.scenes import SceneSource
from ris_model.train.fault_hooks import DebugHooks
from ris_model.train.hooks import StepHooks
from ris_model.train.jobs import run_training_job
from ris_model.train.sinks import NullSink
from ris_model.train.trainer import lr_at
from tests.ris_model.conftest import tiny_system
from tests.ris_model.fault_plants import FaultPlants

#: The diagnostic's own probes, shrunk so that a tiny run's checks take well under a second.
TINY_CHECKS = DiagnosticChecksConfig(overfit_scenes=16, overfit_steps=50, identifiability_scenes=200,
                                     leakage_train_batches=2)
#: The seed's k_only weights (SCIENCE.md, "Losses and phases").
SEED_WEIGHTS = LossWeights(lam_cov=0.1, lam_k=1.5, lam_aux=0.5)


def diag_config(*, frozen: tuple[str, ...] = (), k_max: int = 2, **overrides: Any) -> DiagnosticJobConfig:
    """A tiny diagnostic (4×4 RIS, 4 antennas, 4 snapshots; one epoch of 4 batches of 16) with TINY_CHECKS."""
    fields: dict[str, Any] = dict(
        system=tiny_system(k_max=k_max),
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
        data=DataConfig(n_train=64, n_val=32, batch_size=16),
        phases=(PhaseConfig(name="k_only", epochs=1, amp=False, frozen_groups=frozen, loss_weights=SEED_WEIGHTS),),
        log_every_steps=1,
        checks=TINY_CHECKS,
    )
    return DiagnosticJobConfig(**{**fields, **overrides})


def run_report(config: DiagnosticJobConfig, tmp_path: Path, hooks: StepHooks | None = None) -> dict[str, Any]:
    """The report of a diagnostic run on the CPU; from the NonFiniteAbort when the run aborts. A config with a
    debug section runs with its fault hooks, as in a worker."""
    hooks = hooks or DebugHooks(config.debug)
    try:
        result = run_training_job(config, sink=NullSink(), checkpoint_dir=tmp_path, device="cpu", hooks=hooks)
    except NonFiniteAbort as exc:
        assert exc.report is not None, "an aborted diagnostic must still carry its report"
        return exc.report
    assert result.report is not None
    return result.report


def check(report: dict[str, Any], check_id: int) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["id"] == check_id)


def statuses(report: dict[str, Any]) -> dict[int, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


# ---------------------------------------------------------------- planted faults → the right check FAILs


def test_eigvec_loss_fails_check_1_naming_the_term_even_when_the_run_aborts(tmp_path: Path) -> None:
    phase = diag_config().phases[0].model_copy(update={"max_consecutive_nonfinite": 2})
    config = diag_config(phases=(phase,))
    with pytest.raises(NonFiniteAbort) as info:
        run_training_job(config, sink=NullSink(), checkpoint_dir=tmp_path, device="cpu",
                         hooks=FaultPlants(eigvec_loss=True))
    report = info.value.report
    assert report is not None
    nonfinite = check(report, 1)
    assert nonfinite["status"] == "FAIL"
    assert "eigvec_align" in nonfinite["summary"]
    assert nonfinite["evidence"]["by_loss_term"] == {"eigvec_align": 2}
    assert nonfinite["evidence"]["by_cause"] == {"grad": 2}
    assert nonfinite["evidence"]["first_step"] == 1
    assert report["verdict"]["status"] == "FAIL"
    assert report["verdict"]["decision"].startswith("fix non-finite steps first")


def test_eigvec_loss_without_abort_blames_check_1_not_motion_or_dead_parameters(tmp_path: Path) -> None:
    report = run_report(diag_config(), tmp_path, FaultPlants(eigvec_loss=True))
    assert check(report, 1)["status"] == "FAIL"
    assert "eigvec_align" in check(report, 1)["summary"]
    # every step was skipped: motion and dead parameters cannot be judged, and must not FAIL for it
    assert check(report, 2)["status"] == "PASS"  # skipped steps are counted as batches
    assert check(report, 3)["status"] == "WARN"
    assert check(report, 4)["status"] == "WARN"


def test_one_step_per_epoch_fails_check_2(tmp_path: Path) -> None:
    report = run_report(diag_config(), tmp_path, FaultPlants(one_step_per_epoch=True))
    steps = check(report, 2)
    assert steps["status"] == "FAIL"
    assert "1 steps and 0 skipped for 4 batches" in steps["summary"]
    assert report["verdict"]["decision"].startswith("fix optimizer steps and LR schedule first")


def test_val_from_train_fails_check_5(tmp_path: Path) -> None:
    report = run_report(diag_config(), tmp_path, FaultPlants(val_from_train=True))
    leakage = check(report, 5)
    assert leakage["status"] == "FAIL"
    assert "train/val" in leakage["summary"]
    assert leakage["evidence"]["shared"]["train_val"] == 16  # the whole first train batch
    assert [c["id"] for c in report["checks"] if c["status"] == "FAIL" and c["id"] <= 6] == [5]


def test_symbols_constant_fails_check_6_as_not_identifiable(tmp_path: Path) -> None:
    report = run_report(diag_config(), tmp_path, FaultPlants(symbols_constant=True))
    identifiability = check(report, 6)
    assert identifiability["status"] == "FAIL"
    assert "not identifiable" in identifiability["summary"]
    assert identifiability["evidence"]["symbols_constant_across_snapshots"] is True
    assert "i.i.d. per snapshot" in identifiability["next_step"]


def test_frozen_group_that_moves_fails_check_3_naming_the_group(tmp_path: Path) -> None:
    report = run_report(diag_config(frozen=("cov_head",)), tmp_path, FaultPlants(frozen_still_moves="cov_head"))
    motion = check(report, 3)
    assert motion["status"] == "FAIL"
    assert "frozen group cov_head moved" in motion["summary"]
    assert motion["evidence"]["delta_l2_per_epoch"]["k_only"]["cov_head"][0] > 0


def test_unused_head_fails_check_4_naming_the_parameter(tmp_path: Path) -> None:
    report = run_report(diag_config(), tmp_path, FaultPlants(unused_head=True))
    dead = check(report, 4)
    assert dead["status"] == "FAIL"
    assert "k_head.unused.weight" in dead["summary"]
    assert set(dead["evidence"]["never_updated"]) == {"k_head.unused.weight", "k_head.unused.bias"}


def test_faults_refuse_an_unknown_group() -> None:
    with pytest.raises(ValueError, match="frozen_still_moves"):
        FaultPlants(frozen_still_moves="decoder")


# ---------------------------------------------------------------- bugs of the checks themselves


def test_nan_loss_term_for_a_few_steps_fails_check_1_and_check_2_counts_skipped_steps(tmp_path: Path) -> None:
    config = diag_config(debug=DebugConfig(nan_loss_term="k", nan_from_step=1, nan_n_steps=2))
    report = run_report(config, tmp_path)
    assert check(report, 1)["status"] == "FAIL"
    assert check(report, 1)["evidence"]["by_loss_term"] == {"k": 2}
    assert "by cause loss: 2" in check(report, 1)["summary"]
    assert check(report, 2)["status"] == "PASS"  # 2 optimizer steps + 2 skipped == 4 batches


def _lr_by_key(config: DiagnosticJobConfig, n_batches: int) -> dict[str, list[MetricPoint]]:
    """The LR points a correct trainer logs at every step, plus the per-epoch step counts."""
    phase = config.phases[0]
    total = phase.epochs * n_batches
    by_key: dict[str, list[MetricPoint]] = defaultdict(list)
    by_key[keys.TRAIN_LR] = [MetricPoint(phase=phase.name, epoch=s // n_batches + 1, step=s + 1, key=keys.TRAIN_LR,
                                         value=lr_at(phase, s, total)) for s in range(total)]
    for e in range(1, phase.epochs + 1):
        for key in (keys.TRAIN_BATCHES, keys.TRAIN_OPTIMIZER_STEPS):
            by_key[key].append(MetricPoint(phase=phase.name, epoch=e, step=e * n_batches, key=key, value=n_batches))
    return by_key


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_check_2_passes_a_schedule_followed_to_its_end(schedule: str) -> None:
    # onecycle ends at LR 0: the relative error must not divide by it
    config = diag_config(phases=(diag_config().phases[0].model_copy(update={"schedule": schedule, "epochs": 3}),))
    result = check_steps_and_lr(config, _lr_by_key(config, 4), 4)
    assert result.status == "PASS", result.summary


def test_check_2_fails_an_lr_that_does_not_follow_the_schedule() -> None:
    config = diag_config(phases=(diag_config().phases[0].model_copy(update={"epochs": 3}),))
    by_key = _lr_by_key(config, 4)
    by_key[keys.TRAIN_LR] = [p.model_copy(update={"value": config.phases[0].lr}) for p in by_key[keys.TRAIN_LR]]
    result = check_steps_and_lr(config, by_key, 4)
    assert result.status == "FAIL"
    assert "did not follow the schedule" in result.summary


def test_checks_6_7_8_handle_k_max_1(tmp_path: Path) -> None:
    report = run_report(diag_config(k_max=1), tmp_path)
    assert {i: statuses(report)[i] for i in (6, 7, 8)} == {6: "PASS", 7: "PASS", 8: "PASS"}
    assert "K_MAX = 1" in check(report, 6)["summary"]


def test_check_6_passes_iid_symbols_with_the_oracle_above_chance() -> None:
    config = diag_config()
    result = check_identifiability(config, SceneSource(config.system, config.data, "cpu"))
    assert result.status == "PASS", result.summary
    assert result.evidence["oracle_uncompressed_mdl_acc"] > result.evidence["chance"] + 0.1


# ---------------------------------------------------------------- check 7: K indexing


def _learning(confusion: list[list[int]], *, full_budget: bool = True) -> Any:
    """Check 7 on a final confusion matrix, after the reference diagnostic's training budget (10 epochs of
    5,000 scenes in batches of 64) or, with `full_budget=False`, after the tiny run's 4 steps."""
    k_max = len(confusion)
    acc = sum(confusion[i][i] for i in range(k_max)) / sum(map(sum, confusion))
    by_key: dict[str, list[MetricPoint]] = defaultdict(list)
    by_key[keys.VAL_K_ACC] = [MetricPoint(phase="k_only", epoch=1, step=4, key=keys.VAL_K_ACC, value=acc)]
    config = diag_config(k_max=k_max)
    if full_budget:
        config = diag_config(k_max=k_max, data=DataConfig(n_train=5000, n_val=1000, batch_size=64),
                             phases=(config.phases[0].model_copy(update={"epochs": 10}),))
        assert config.total_steps >= reference_training_steps()
    return check_learning(config, by_key, confusion)


def test_check_7_detects_predictions_shifted_by_one() -> None:
    # labels 1..5, predictions K + 1 (the last class saturates): the seed's "K vs K−1" bug
    confusion = [[0, 50, 0, 0, 0], [0, 2, 48, 0, 0], [0, 0, 3, 47, 0], [0, 0, 0, 1, 49], [0, 0, 0, 0, 50]]
    result = _learning(confusion)
    assert result.status == "FAIL"
    assert "different K indexing" in result.summary
    assert result.evidence["label_shift"]["shift"] == 1


def test_check_7_detects_predictions_shifted_down_by_one() -> None:
    confusion = [[40, 0, 0], [45, 5, 0], [0, 44, 6]]
    assert label_shift(confusion) == {"shift": -1, "fraction": pytest.approx(89 / 100),
                                      "rows_with_majority_shifted": 2}
    assert _learning(confusion).status == "FAIL"


def test_check_7_does_not_call_a_constant_prediction_a_shift() -> None:
    # every scene predicted K = 2: at K_MAX = 2 half the errors are "off by one", but nothing is shifted
    assert label_shift([[0, 50], [0, 50]]) is None
    assert label_shift([[0, 50, 0], [0, 50, 0], [0, 50, 0]]) is None
    assert _learning([[0, 50, 0], [0, 50, 0], [0, 50, 0]]).status == "FAIL"  # at chance, not a shift


def test_check_7_passes_a_diagonal_confusion_above_the_bar() -> None:
    result = _learning([[40, 10, 0], [8, 35, 7], [0, 10, 40]])
    assert result.status == "PASS"
    assert result.evidence["label_shift"] is None


def test_check_7_at_a_short_budget_skips_near_chance_and_still_fails_a_shift() -> None:
    # a constant prediction after a few steps may be a slow start: SKIP, with the reason, not a FAIL
    constant = _learning([[0, 50, 0], [0, 50, 0], [0, 50, 0]], full_budget=False)
    assert constant.status == "SKIP"
    assert "too few to tell a slow start from a bug" in constant.summary
    # a shifted indexing is visible at any budget
    shifted = [[0, 50, 0, 0, 0], [0, 2, 48, 0, 0], [0, 0, 3, 47, 0], [0, 0, 0, 1, 49], [0, 0, 0, 0, 50]]
    assert _learning(shifted, full_budget=False).status == "FAIL"
    # and so is accuracy far below chance (here 0.10 at chance 1/3 over 150 scenes)
    anti = _learning([[5, 25, 20], [25, 5, 20], [20, 25, 5]], full_budget=False)
    assert anti.status == "FAIL"
    assert "below chance" in anti.summary


def test_check_7_at_a_short_budget_passes_above_the_binomial_bound_of_chance() -> None:
    # 0.28 over 250 scenes at K_MAX = 5: below the seed's 0.3, but 2.8 s.d. above chance 0.2
    confusion = [[14, 9, 9, 9, 9], [9, 14, 9, 9, 9], [9, 9, 14, 9, 9], [9, 9, 9, 14, 9], [9, 9, 9, 9, 14]]
    short = _learning(confusion, full_budget=False)
    assert short.status == "PASS", short.summary
    assert short.evidence["pass_bar"] == pytest.approx(above_chance_bar(0.2, 250))
    assert _learning(confusion).status == "WARN"  # at the reference budget the seed's bar holds


def test_learning_bar_is_the_seeds_at_k_max_5_and_above_chance_elsewhere() -> None:
    assert learning_bar(5) == pytest.approx(0.3)
    assert learning_bar(2) == pytest.approx(0.6)
    assert all(learning_bar(k) > 1 / k for k in range(2, 9))


# ---------------------------------------------------------------- a healthy run


def healthy_config() -> DiagnosticJobConfig:
    """The smallest diagnostic found where the K-head really learns on a CPU in a few seconds: K_MAX = 2,
    M = L = 8 (N = 16), SNR 10–20 dB, 4 epochs of 512 scenes, LR 3e-3; seed 0: val K_acc 0.80 (bar 0.6),
    energy in the true top-K 0.83 (bar 0.8). So small a run is seed-sensitive: over seeds 0–5, check 7 passed
    for 4 seeds and check 9's energy ranged 0.76–0.83 around its 0.8 bar, with this and the previous scene
    stream alike (the sync-free source placement changed which scenes a seed draws, moving seed 1 from 0.81
    to 0.79), so the fixture pins a seed where the run is healthy."""
    return DiagnosticJobConfig(
        system=tiny_system(k_max=2, n_bs_antennas=8, n_snapshots=8, snr_min_db=10.0, snr_max_db=20.0),
        model=ModelConfig(d_model=16, n_layers=1, n_heads=2),
        data=DataConfig(n_train=512, n_val=128, batch_size=32, seed=0),
        phases=(PhaseConfig(name="k_only", epochs=4, lr=3e-3, amp=False, loss_weights=SEED_WEIGHTS),),
        log_every_steps=1,
        checks=DiagnosticChecksConfig(overfit_scenes=32, overfit_steps=150, identifiability_scenes=200,
                                      leakage_train_batches=4),
    )


@pytest.fixture(scope="module")
def healthy_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        yield run_report(healthy_config(), tmp_path_factory.mktemp("healthy"))


def test_healthy_run_passes_every_check(healthy_report: dict[str, Any]) -> None:
    assert statuses(healthy_report) == {i: "PASS" for i in range(1, 11)}, [
        (c["id"], c["summary"]) for c in healthy_report["checks"] if c["status"] != "PASS"]
    assert healthy_report["verdict"] == {"status": "PASS", "decision": "proceed to three-phase training",
                                         "reasons": []}


def test_healthy_run_learns_above_the_bar_and_fits_the_overfit_set(healthy_report: dict[str, Any]) -> None:
    learning, overfit = check(healthy_report, 7), check(healthy_report, 8)
    assert learning["evidence"]["val_k_acc_per_epoch"][-1] >= 0.7
    assert overfit["evidence"]["train_k_acc"] >= 0.95
    assert overfit["evidence"]["steps_run"] < overfit["evidence"]["budget_steps"]


def test_healthy_run_report_records_provenance_and_timing(healthy_report: dict[str, Any]) -> None:
    provenance = check(healthy_report, 10)["evidence"]
    assert provenance["phases"][0]["loss_weights"] == SEED_WEIGHTS.model_dump()
    assert provenance["phases"][0]["frozen_groups"] == []
    assert provenance["config_sha256"] == healthy_config().sha256()
    timing = healthy_report["timing_s"]
    assert set(timing) == {"training", "checks", *(f"check_{i}" for i in range(1, 11))}
    assert sum(timing[f"check_{i}"] for i in range(1, 11)) <= timing["checks"]
