"""The diagnostic job as a training doctor: automatic checks and a machine-readable verdict.

Owns `diagnose(...) -> DiagnosticReport`. Reads what the trainer reported (metric points, FitResult), the
config, and runs three small probes of its own (split leakage, identifiability, overfit). Each check says
PASS / WARN / FAIL, shows its evidence and what to do next, or SKIP when the run's budget (training steps, val
scenes, probe steps) is too small for it to judge: a short run is never reported as a bug. The verdict
automates the decision a diagnostic is for: which machinery to fix first, or whether to proceed to three-phase
training.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from enum import IntEnum

import torch
import torch.nn.functional as nnf
from torch import Tensor

from api_schemas import (
    CheckResult,
    CheckStatus,
    DiagnosticJobConfig,
    DiagnosticReport,
    MetricPoint,
    NonfiniteSummary,
    Verdict,
    fold_nonfinite,
)
from api_schemas import metrics as keys
from api_schemas.config import DiagnosticChecksConfig
from ris_model.estimators.counting import oracle_array_counts
from ris_model.losses import compute_loss
from ris_model.model.network import RisNet, k_from_logits
from ris_model.scenes import SceneBatch, SceneSource, Split, make_generator, stream_seed
from ris_model.spectral import measurement_eigen_features
from ris_model.train.trainer import FitResult, lr_at

PASS, WARN, FAIL, SKIP = CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.SKIP
log = logging.getLogger(__name__)


class CheckId(IntEnum):
    """The checks of a diagnostic report, in report order (`CheckResult.id`)."""

    NONFINITE = 1
    STEPS_AND_LR = 2
    PARAM_MOTION = 3
    DEAD_PARAMETERS = 4
    SPLIT_LEAKAGE = 5
    IDENTIFIABILITY = 6
    LEARNING = 7
    OVERFIT = 8
    COVARIANCE = 9
    PROVENANCE = 10


#: the checks of the training machinery and the data: a FAIL among them is fixed before anything else
MACHINERY_CHECKS = frozenset({CheckId.NONFINITE, CheckId.STEPS_AND_LR, CheckId.PARAM_MOTION,
                              CheckId.DEAD_PARAMETERS, CheckId.SPLIT_LEAKAGE, CheckId.IDENTIFIABILITY})
SEED_BAR = (0.3, 0.4)  # the predecessor's target: "K_acc rises above 0.3–0.4" at K_MAX = 5 (chance: 0.2)
IDENTIFIABLE_MARGIN = 0.1  # check 6: accuracy above chance that counts as "K is recoverable"
IDENTIFIABLE_Z = 3.0  # check 6: ... and binomial standard deviations above chance
OVERFIT_ACC = 0.95  # check 8: train K_acc that counts as fitted
OVERFIT_EVAL_EVERY = 5  # check 8: steps between accuracy reads
#: checks 7 and 8: binomial standard deviations above chance (or above the probe's start) that count as "learned
#: something": one-sided 1 %, the chance that a model no better than chance passes on luck
LEARNED_Z = 2.326
#: check 7: binomial standard deviations *below* chance that count as systematically wrong at any budget
#: (one-sided 0.13 %: a model predicting a constant K lands on chance, not below it)
BELOW_CHANCE_Z = 3.0


def reference_training_steps() -> int:
    """Optimizer steps of the reference diagnostic (DiagnosticJobConfig's defaults: 10 epochs × 5,000 scenes in
    batches of 64): the budget at which the seed's K_acc bar and the covariance bars are calibrated."""
    return DiagnosticJobConfig().total_steps


def reference_overfit_steps() -> int:
    """The overfit probe's default budget: the one at which its 0.95 target is calibrated."""
    return DiagnosticChecksConfig().overfit_steps


def above_chance_bar(chance: float, n: int, z: float = LEARNED_Z) -> float:
    """The accuracy over `n` scenes that a classifier at `chance` exceeds with probability Φ(−z) only
    (normal approximation of the binomial)."""
    return chance + z * math.sqrt(chance * (1.0 - chance) / max(n, 1))


#: Called before each check and once after the last: (checks done, checks in all).
CheckProgress = Callable[[int, int], None]


def diagnose(config: DiagnosticJobConfig, model: RisNet, result: FitResult, points: Sequence[MetricPoint],
             scenes: SceneSource, *, confusion: list[list[int]] | None, train_seconds: float,
             on_progress: CheckProgress | None = None) -> DiagnosticReport:
    """Run every check on a finished (or aborted) diagnostic run; `timing_s` holds the training time, the
    checks' total and each check's own (`check_<id>`), so that their cost can be read against the run's.
    Each check's outcome is logged (logger `ris_model.diagnose.checks`) as it finishes."""
    started = time.perf_counter()
    by_key: dict[str, list[MetricPoint]] = defaultdict(list)
    for p in points:
        by_key[p.key].append(p)
    runs: list[Callable[[], CheckResult]] = [
        lambda: check_nonfinite(points),
        lambda: check_steps_and_lr(config, by_key, scenes.n_batches),
        lambda: check_param_motion(config, by_key),
        lambda: check_dead_parameters(config, model, result),
        lambda: check_split_leakage(config, scenes),
        lambda: check_identifiability(config, scenes),
        lambda: check_learning(config, by_key, confusion),
        lambda: check_overfit(config, model, scenes),
        lambda: check_covariance(config, model, scenes),
        lambda: check_provenance(config),
    ]
    checks, per_check = [], {}
    for i, run in enumerate(runs):
        if on_progress is not None:
            on_progress(i, len(runs))
        t0 = time.perf_counter()
        checks.append(run())
        c, seconds = checks[-1], time.perf_counter() - t0
        per_check[f"check_{c.id}"] = seconds
        log.info("check %d/%d %s: %s (%.1f s) %s", i + 1, len(runs), c.name, c.status, seconds, c.summary)
    if on_progress is not None:
        on_progress(len(runs), len(runs))
    timing = {"training": train_seconds, "checks": time.perf_counter() - started, **per_check}
    return DiagnosticReport(verdict=_verdict(checks), checks=checks, timing_s=timing)


# ---------------------------------------------------------------- 1. non-finite steps
def check_nonfinite(points: Sequence[MetricPoint]) -> CheckResult:
    s = fold_nonfinite(NonfiniteSummary(), points)
    first = min((p for p in points if p.key.startswith(keys.NONFINITE_CAUSE_PREFIX)), key=lambda p: p.step,
                default=None)
    evidence = {"total": s.total, "by_phase": s.by_phase, "by_cause": s.by_cause, "by_loss_term": s.by_loss_term,
                "by_param_group": s.by_param_group, "first_step": first.step if first else None,
                "last": s.last.model_dump() if s.last else None}
    if s.total == 0:
        return CheckResult(id=CheckId.NONFINITE, name="non-finite steps", status=PASS, summary="no step was skipped",
                           evidence=evidence)
    terms = ", ".join(sorted(s.by_loss_term)) or "none identified"
    return CheckResult(
        id=CheckId.NONFINITE, name="non-finite steps", status=FAIL, evidence=evidence,
        summary=f"{s.total} steps skipped (first at step {evidence['first_step']}; by cause {_counts(s.by_cause)}; "
                f"by phase {_counts(s.by_phase)}); loss terms involved: {terms}; "
                f"parameter groups: {', '.join(sorted(s.by_param_group)) or '-'}",
        next_step="fix the named loss term(s): a term through eigen/singular vectors of a rank-deficient R̂ "
                  "is the usual cause (docs/SCIENCE.md, 'Numerically stable spectral features') — use eigenvalues "
                  "of the K×K Gram matrix instead",
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-"


# ---------------------------------------------------------------- 2. optimizer steps and LR
def check_steps_and_lr(config: DiagnosticJobConfig, by_key: dict[str, list[MetricPoint]],
                       n_batches: int) -> CheckResult:
    """Per epoch: optimizer steps + skipped steps == batches; per sampled step: the LR the schedule gives."""
    name = "optimizer steps and LR schedule"
    skipped = {(p.phase, p.epoch): p.value for p in by_key[keys.TRAIN_NONFINITE_SKIPPED]}
    steps = {(p.phase, p.epoch): p.value for p in by_key[keys.TRAIN_OPTIMIZER_STEPS]}
    bad_epochs = [
        {"phase": b.phase, "epoch": b.epoch, "batches": b.value, "optimizer_steps": steps.get((b.phase, b.epoch)),
         "skipped": skipped.get((b.phase, b.epoch), 0.0)}
        for b in by_key[keys.TRAIN_BATCHES]
        if steps.get((b.phase, b.epoch), 0.0) + skipped.get((b.phase, b.epoch), 0.0) != b.value
    ]
    lr_errors = _lr_errors(config, by_key[keys.TRAIN_LR], n_batches)
    lr_values = [p.value for p in by_key[keys.TRAIN_LR]]
    evidence = {"epochs_checked": len(by_key[keys.TRAIN_BATCHES]), "epochs_with_mismatch": bad_epochs[:10],
                "batches_per_epoch": n_batches, "lr_max_rel_error": max(lr_errors, default=0.0),
                "lr_min": min(lr_values, default=None), "lr_max": max(lr_values, default=None),
                "lr_points_checked": len(lr_errors)}
    if bad_epochs:
        first = bad_epochs[0]
        return CheckResult(
            id=CheckId.STEPS_AND_LR, name=name, status=FAIL, evidence=evidence,
            summary=f"{len(bad_epochs)} epochs took fewer optimizer steps than batches (e.g. phase "
                    f"{first['phase']} epoch {first['epoch']}: {first['optimizer_steps'] or 0:.0f} steps and "
                    f"{first['skipped']:.0f} skipped for {first['batches']:.0f} batches)",
            next_step="step the optimizer once per batch, not once per epoch")
    if max(lr_errors, default=0.0) > 1e-6:
        return CheckResult(id=CheckId.STEPS_AND_LR, name=name, status=FAIL, evidence=evidence,
                           summary="the learning rate did not follow the schedule step by step "
                                   f"(max relative error {evidence['lr_max_rel_error']:.3g})",
                           next_step="set the LR from the schedule at every optimizer step")
    if not by_key[keys.TRAIN_BATCHES]:
        return CheckResult(id=CheckId.STEPS_AND_LR, name=name, status=WARN, evidence=evidence,
                           summary="no epoch completed: optimizer steps per batch could not be checked",
                           next_step="see the non-finite check; the run stopped before the end of an epoch")
    return CheckResult(id=CheckId.STEPS_AND_LR, name=name, status=PASS, evidence=evidence,
                       summary=f"one optimizer step per batch ({n_batches} per epoch, skipped steps counted); "
                               f"LR followed the schedule at {len(lr_errors)} sampled steps")


def _lr_errors(config: DiagnosticJobConfig, lr_points: list[MetricPoint], n_batches: int) -> list[float]:
    """|LR logged − LR of the schedule| / the phase's peak LR, per sampled step (the schedule may reach 0)."""
    phases = {p.name: p for p in config.phases}
    first_step = _phase_first_steps(config, n_batches)
    errors = []
    for p in lr_points:
        phase = phases[p.phase]
        expected = lr_at(phase, p.step - 1 - first_step[p.phase], phase.epochs * n_batches)
        errors.append(abs(p.value - expected) / phase.lr)
    return errors


def _phase_first_steps(config: DiagnosticJobConfig, n_batches: int) -> dict[str, int]:
    out, step = {}, 0
    for p in config.phases:
        out[p.name] = step
        step += p.epochs * n_batches
    return out


# ---------------------------------------------------------------- 3. parameter motion
def check_param_motion(config: DiagnosticJobConfig, by_key: dict[str, list[MetricPoint]]) -> CheckResult:
    """‖Δparam‖₂ per epoch per group: every trainable group moved, no frozen group moved (any nonzero Δ).

    An epoch in which no optimizer step was taken (all skipped) is no evidence on trainable groups."""
    name = "parameter motion per group"
    frozen = {p.name: set(p.frozen_groups) for p in config.phases}
    steps = {(p.phase, p.epoch): p.value for p in by_key[keys.TRAIN_OPTIMIZER_STEPS]}
    problems: list[str] = []
    idle_epochs: set[tuple[str, int]] = set()
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, pts in sorted(by_key.items()):
        if not key.startswith(keys.TRAIN_DELTA_PARAM_GROUP_PREFIX):
            continue
        group = key.removeprefix(keys.TRAIN_DELTA_PARAM_GROUP_PREFIX)
        for p in pts:
            table[p.phase][group].append(p.value)
            if not math.isfinite(p.value):
                problems.append(f"group {group} has non-finite weights after phase {p.phase} epoch {p.epoch}")
            elif group in frozen[p.phase]:
                if p.value != 0.0:
                    problems.append(f"frozen group {group} moved by {p.value:.3g} in phase {p.phase} "
                                    f"epoch {p.epoch}")
            elif p.value == 0.0:
                if steps.get((p.phase, p.epoch), 1.0) == 0.0:
                    idle_epochs.add((p.phase, p.epoch))
                else:
                    problems.append(f"trainable group {group} did not move in phase {p.phase} epoch {p.epoch}")
    evidence = {"delta_l2_per_epoch": {ph: dict(g) for ph, g in table.items()},
                "frozen_groups": {ph: sorted(g) for ph, g in frozen.items()}, "problems": problems[:10],
                "epochs_without_optimizer_steps": [f"{ph} epoch {e}" for ph, e in sorted(idle_epochs)]}
    if problems:
        return CheckResult(id=CheckId.PARAM_MOTION, name=name, status=FAIL, evidence=evidence,
                           summary=problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                           next_step="make freezing real (requires_grad off and out of the optimizer, no update "
                                     "outside it) and check that trainable groups receive gradients")
    if not table or idle_epochs:
        why = "no epoch completed" if not table else f"{len(idle_epochs)} epochs took no optimizer step"
        return CheckResult(id=CheckId.PARAM_MOTION, name=name, status=WARN, evidence=evidence,
                           summary=f"{why}: parameter motion could not be checked there",
                           next_step="see the non-finite and optimizer-step checks")
    return CheckResult(id=CheckId.PARAM_MOTION, name=name, status=PASS, evidence=evidence,
                       summary="trainable groups moved every epoch; frozen groups did not")


# ---------------------------------------------------------------- 4. dead parameters
def check_dead_parameters(config: DiagnosticJobConfig, model: RisNet, result: FitResult) -> CheckResult:
    always_frozen = set.intersection(*(set(p.frozen_groups) for p in config.phases))
    frozen_names = {n for g in always_frozen for n, p in _named_group(model, g)}
    dead = [n for n in result.never_updated if n not in frozen_names]
    n_trainable = sum(1 for n, _ in model.named_parameters() if n not in frozen_names)
    evidence = {"never_updated": dead[:50], "n_never_updated": len(dead), "n_trainable_tensors": n_trainable,
                "always_frozen_groups": sorted(always_frozen)}
    if dead and len(dead) == n_trainable:
        return CheckResult(id=CheckId.DEAD_PARAMETERS, name="dead parameters", status=WARN, evidence=evidence,
                           summary="no optimizer step was taken, so no parameter can be called dead or alive",
                           next_step="see the non-finite and optimizer-step checks")
    if dead:
        return CheckResult(id=CheckId.DEAD_PARAMETERS, name="dead parameters", status=FAIL, evidence=evidence,
                           summary=f"{len(dead)} parameter tensors never received a gradient (e.g. {dead[0]})",
                           next_step="remove the unused module or connect it to a loss term")
    return CheckResult(id=CheckId.DEAD_PARAMETERS, name="dead parameters", status=PASS, evidence=evidence,
                       summary="every trainable parameter received a gradient")


def _named_group(model: RisNet, group: str) -> list[tuple[str, torch.nn.Parameter]]:
    ids = {id(p) for p in model.param_groups()[group]}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


# ---------------------------------------------------------------- 5. split leakage
def scene_hashes(batch: SceneBatch) -> set[str]:
    """sha1 per scene of its labels and inputs (rounded, so that the same scene hashes the same).
    One device→host copy per batch, not per scene."""
    stacked = torch.cat([batch.azimuth, batch.elevation, batch.range_m, batch.power], -1)
    labels = torch.round(stacked.double() * 1e5).cpu().numpy()  # [B, 4·K_MAX]
    y = torch.round(torch.view_as_real(batch.y).double() * 1e4).cpu().numpy()  # [B, L, M, 2]
    out = set()
    for i in range(len(batch)):
        h = hashlib.sha1(labels[i].tobytes())
        h.update(y[i].tobytes())
        out.add(h.hexdigest())
    return out


def check_split_leakage(config: DiagnosticJobConfig, scenes: SceneSource) -> CheckResult:
    n_train_batches = min(config.checks.leakage_train_batches, scenes.n_batches)
    train: set[str] = set()
    for b in range(n_train_batches):
        train |= scene_hashes(scenes.train_batch(0, b))
    val: set[str] = set()
    for batch in scenes.val_batches():
        val |= scene_hashes(batch)
    test = scene_hashes(scenes.pool(Split.TEST, min(config.data.n_val, 1024)))
    overlap = {"train_val": len(train & val), "train_test": len(train & test), "val_test": len(val & test)}
    evidence = {"hashed": {"train": len(train), "val": len(val), "test": len(test)}, "shared": overlap}
    if any(overlap.values()):
        worst = max(overlap, key=lambda k: overlap[k])
        return CheckResult(id=CheckId.SPLIT_LEAKAGE, name="split leakage", status=FAIL, evidence=evidence,
                           summary=f"{overlap[worst]} scenes appear in two splits ({worst.replace('_', '/')})",
                           next_step="draw each split from its own RNG stream (SeedSequence spawn keys)")
    return CheckResult(id=CheckId.SPLIT_LEAKAGE, name="split leakage", status=PASS, evidence=evidence,
                       summary="no scene appears in two splits")


# ---------------------------------------------------------------- 6. identifiability
def check_identifiability(config: DiagnosticJobConfig, scenes: SceneSource) -> CheckResult:
    """Is K recoverable from the data as configured? (a) how well the measurement-domain spectral features
    separate K (nearest class mean, held-out half) and how their effective rank spreads across K; (b) a
    classical oracle: MDL on an uncompressed RIS array observing the same sources with the generator's symbol
    model. An accuracy counts as above chance when it beats chance by IDENTIFIABLE_MARGIN and by
    IDENTIFIABLE_Z binomial standard deviations (so that a few hundred scenes cannot pass by luck).
    FAIL when neither (a) nor (b) is above chance; PASS when the oracle is; WARN when only the features are."""
    name = "identifiability of K"
    k_max = config.system.k_max
    if k_max == 1:
        return CheckResult(id=CheckId.IDENTIFIABILITY, name=name, status=PASS, evidence={"k_max": 1},
                           summary="K_MAX = 1: every scene has one source, K is known")
    n = config.checks.identifiability_scenes
    batch = scenes.pool(Split.TEST, n)
    feats = measurement_eigen_features(batch.y, floor=config.model.spectral_floor).float()
    feature_acc = _nearest_mean_accuracy(feats, batch.k, k_max)
    oracle_acc = _oracle_mdl_accuracy(batch, scenes)
    chance = 1.0 / k_max
    features_ok = _above_chance(feature_acc, chance, n - n // 2)
    oracle_ok = _above_chance(oracle_acc, chance, n)
    spread = {str(k): float(feats[batch.k == k, -1].mean()) for k in range(1, k_max + 1) if (batch.k == k).any()}
    evidence = {"chance": chance, "feature_nearest_mean_acc": feature_acc, "oracle_uncompressed_mdl_acc": oracle_acc,
                "feature_effective_rank_mean_by_k": spread, "n_scenes": n,
                "symbols_constant_across_snapshots": scenes.symbols_constant}
    detail = (f"oracle MDL on an uncompressed array {oracle_acc:.2f}, measurement spectral features "
              f"{feature_acc:.2f} (chance {chance:.2f})")
    if not oracle_ok and not features_ok:
        return CheckResult(
            id=CheckId.IDENTIFIABILITY, name=name, status=FAIL, evidence=evidence,
            summary=f"K is not identifiable from the data as configured: {detail}",
            next_step="draw symbols i.i.d. per snapshot (constant symbols make the snapshots rank-1); check SNR "
                      "range and source separation")
    if not oracle_ok:
        return CheckResult(id=CheckId.IDENTIFIABILITY, name=name, status=WARN, evidence=evidence,
                           summary=f"the classical oracle cannot count sources, the features can: {detail}",
                           next_step="check the symbol model, SNR range and source separation")
    return CheckResult(id=CheckId.IDENTIFIABILITY, name=name, status=PASS, evidence=evidence,
                       summary=f"K is identifiable: {detail}")


def _above_chance(acc: float, chance: float, n: int) -> bool:
    sd = math.sqrt(chance * (1 - chance) / max(n, 1))
    return acc >= chance + IDENTIFIABLE_MARGIN and acc >= chance + IDENTIFIABLE_Z * sd


def _nearest_mean_accuracy(feats: Tensor, k: Tensor, k_max: int) -> float:
    half = feats.shape[0] // 2
    means = torch.stack([feats[:half][k[:half] == c].mean(0) if (k[:half] == c).any()
                         else torch.full_like(feats[0], float("inf")) for c in range(1, k_max + 1)])
    pred = torch.cdist(feats[half:], means).argmin(-1) + 1
    return float((pred == k[half:]).float().mean())


def _oracle_mdl_accuracy(batch: SceneBatch, scenes: SceneSource) -> float:
    """MDL (Wax–Kailath) on an uncompressed N-element array with the same sources, the same symbol model as
    the data (constant across snapshots when the generator makes them so) and SNR
    (`estimators.counting.oracle_array_counts`). Accuracy of K̂ clipped to 1..K_MAX."""
    g = make_generator(stream_seed(scenes.data.seed, Split.TEST, 10**6), scenes.device)
    k_hat = oracle_array_counts(batch, generator=g, method="mdl", symbols_constant=scenes.symbols_constant)
    k_hat = k_hat.to(batch.k.device).clamp(1, batch.A.shape[-1])  # the oracle knows that K is in 1..K_MAX
    return float((k_hat == batch.k).float().mean())


# ---------------------------------------------------------------- 7. learning
def check_learning(config: DiagnosticJobConfig, by_key: dict[str, list[MetricPoint]],
                   confusion: list[list[int]] | None) -> CheckResult:
    """Final val K_acc against chance (1/K_MAX: the generator draws K uniformly) and a bar set by the budget.

    The confusion matrix is checked first for a K-indexing shift between labels and predictions ("K vs K−1"),
    at any budget. Then:
    - at the reference diagnostic's training budget or more (`reference_training_steps`), the bar is the
      seed's, generalised to any K_MAX (`learning_bar`), and never below the binomial bound over the val
      scenes; below it the check WARNs (FAILs near chance);
    - on a shorter run, "learning" means beating chance by more than the binomial noise of n_val scenes
      (`above_chance_bar`, LEARNED_Z): PASS above it; a val K_acc BELOW_CHANCE_Z deviations *below* chance is
      systematic and FAILs; anything between is SKIP, since so short a run cannot tell a slow start from a bug."""
    name = "learning (K accuracy)"
    k_max = config.system.k_max
    chance = 1.0 / k_max
    acc = [p.value for p in by_key[keys.VAL_K_ACC]]
    over = [p.value for p in by_key[keys.VAL_K_OVER]]
    under = [p.value for p in by_key[keys.VAL_K_UNDER]]
    n_val = sum(map(sum, confusion)) if confusion else config.data.n_val
    steps, reference_steps = config.total_steps, reference_training_steps()
    full_budget = steps >= reference_steps
    significance = above_chance_bar(chance, n_val)
    bar = max(learning_bar(k_max), significance) if full_budget else significance
    evidence = {"val_k_acc_per_epoch": acc, "chance": chance, "pass_bar": bar, "seed_bar": list(SEED_BAR),
                "n_val_scenes": n_val, "training_steps": steps, "reference_training_steps": reference_steps,
                "k_over": over[-1:] or None, "k_under": under[-1:] or None, "confusion_true_by_pred": confusion}
    if not acc:
        return CheckResult(id=CheckId.LEARNING, name=name, status=FAIL, evidence=evidence,
                           summary="no validation ran", next_step="see the non-finite and step checks")
    final = acc[-1]
    if k_max == 1:
        return CheckResult(id=CheckId.LEARNING, name=name, status=PASS, evidence=evidence,
                           summary=f"K_MAX = 1: K is known (val K_acc {final:.3f})")
    shift = label_shift(confusion)
    evidence["label_shift"] = shift
    if shift is not None:
        return CheckResult(id=CheckId.LEARNING, name=name, status=FAIL, evidence=evidence,
                           summary=f"labels and predictions use different K indexing: predictions are K "
                                   f"{shift['shift']:+d} for {shift['fraction']:.2f} of the scenes whose K can "
                                   f"shift (val K_acc {final:.3f})",
                           next_step="use one indexing on both sides (class i ↔ K = i + 1)")
    next_step = ("check label indexing (K vs K−1) and the confusion matrix; train longer or on more scenes; see "
                 "identifiability and the overfit probe")
    if final >= bar:
        how = (f"seed bar {SEED_BAR[0]}–{SEED_BAR[1]} at K_MAX = 5" if full_budget else
               f"{LEARNED_Z} binomial s.d. above chance over {n_val} val scenes, after {steps} steps")
        return CheckResult(id=CheckId.LEARNING, name=name, status=PASS, evidence=evidence,
                           summary=f"val K_acc {final:.3f} ≥ {bar:.3f} (chance {chance:.2f}; {how})")
    if full_budget:
        status = WARN if final > chance + 0.03 else FAIL
        return CheckResult(id=CheckId.LEARNING, name=name, status=status, evidence=evidence,
                           summary=f"val K_acc {final:.3f} is below the bar {bar:.2f} (chance {chance:.2f})",
                           next_step=next_step)
    floor = chance - (above_chance_bar(chance, n_val, BELOW_CHANCE_Z) - chance)
    if final < floor:
        return CheckResult(id=CheckId.LEARNING, name=name, status=FAIL, evidence=evidence,
                           summary=f"val K_acc {final:.3f} is below chance {chance:.2f} by more than the noise of "
                                   f"{n_val} val scenes (< {floor:.3f}): predictions disagree with the labels "
                                   "systematically", next_step=next_step)
    return CheckResult(id=CheckId.LEARNING, name=name, status=SKIP, evidence=evidence,
                       summary=f"val K_acc {final:.3f} is within the noise of chance {chance:.2f} over {n_val} val "
                               f"scenes (bar {bar:.3f}); {steps} training steps are too few to tell a slow start "
                               f"from a bug (the seed bar holds from {reference_steps} steps)",
                       next_step="run the full diagnostic (the default config) to judge learning")


def learning_bar(k_max: int) -> float:
    """The val K_acc a diagnostic must reach to pass: 0.3 at K_MAX = 5 (SEED_BAR), chance + 0.1 above it."""
    return max(SEED_BAR[0], 1.0 / k_max + 0.1)


def label_shift(confusion: list[list[int]] | None) -> dict[str, float | int] | None:
    """A K-indexing shift in a confusion matrix (`confusion[t-1][p-1]`, true × predicted), or None.

    Shift s ∈ {+1, −1} is reported when, among the rows whose K can shift by s, at least two have their
    majority at K + s, those rows hold at least 70 % of their scenes at K + s, and their diagonal cells less
    than half as many (the row whose K cannot shift saturates on the diagonal and is left out).
    Needs K_MAX ≥ 3: at K_MAX = 2 a shift and a constant prediction look the same."""
    if not confusion or len(confusion) < 3:
        return None
    k = len(confusion)
    for s in (1, -1):
        rows = range(k - 1) if s == 1 else range(1, k)
        in_rows = sum(sum(confusion[i]) for i in rows)
        shifted = sum(confusion[i][i + s] for i in rows)
        diagonal = sum(confusion[i][i] for i in rows)
        majority = sum(1 for i in rows if sum(confusion[i]) and max(confusion[i]) == confusion[i][i + s])
        if in_rows and majority >= 2 and shifted >= 0.7 * in_rows and diagonal < 0.5 * shifted:
            return {"shift": s, "fraction": shifted / in_rows, "rows_with_majority_shifted": majority}
    return None


# ---------------------------------------------------------------- 8. overfit probe
def check_overfit(config: DiagnosticJobConfig, model: RisNet, scenes: SceneSource) -> CheckResult:
    """Can a copy of the model fit `overfit_scenes` fixed train scenes (K loss only, every group trainable) to
    K_acc ≥ OVERFIT_ACC within `overfit_steps` full-batch steps? The accuracy is read from the training
    forward pass every OVERFIT_EVAL_EVERY steps (no extra forward), so the probe stops early when it fits; bf16
    autocast on CUDA and the K loss alone keep its cost small next to the run's.

    The 0.95 target is calibrated for the default probe budget (`reference_overfit_steps`). A shorter probe
    that does not reach it PASSes when its accuracy rose above its start by more than the binomial noise of
    its scenes (LEARNED_Z: the K-head's gradient path works), and is SKIP otherwise: too few steps to judge."""
    name = "overfit probe"
    steps, n = config.checks.overfit_steps, config.checks.overfit_scenes
    if steps == 0:
        return CheckResult(id=CheckId.OVERFIT, name=name, status=SKIP, summary="not run (overfit_steps = 0)")
    if config.system.k_max == 1:
        return CheckResult(id=CheckId.OVERFIT, name=name, status=PASS, summary="K_MAX = 1: nothing to fit")
    probe = copy.deepcopy(model).train()
    for p in probe.parameters():
        p.requires_grad_(True)
    batch = scenes.pool(Split.TRAIN_POOL, n)
    opt = torch.optim.AdamW(probe.parameters(), lr=config.checks.overfit_lr, weight_decay=0.0)
    acc, start_acc, steps_run = 0.0, 0.0, 0
    while True:
        with _probe_autocast(scenes.device):
            out = probe(batch.y, batch.H, batch.codes, batch.snr_db)
            # the K term of losses.compute_loss alone (class i ↔ K = i + 1): no set matching or spectra to pay for
            loss = nnf.cross_entropy(out.k_logits.float(), batch.k - 1)
        if steps_run % OVERFIT_EVAL_EVERY == 0 or steps_run == steps:
            acc = float((k_from_logits(out.k_logits.detach()) == batch.k).float().mean())  # after steps_run steps
            if steps_run == 0:
                start_acc = acc
            if acc >= OVERFIT_ACC or steps_run == steps:
                break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps_run += 1
    chance = 1.0 / config.system.k_max
    reference_steps = reference_overfit_steps()
    rise_bar = above_chance_bar(start_acc, n) if 0.0 < start_acc < 1.0 else above_chance_bar(chance, n)
    evidence = {"scenes": n, "steps_run": steps_run, "budget_steps": steps, "train_k_acc": acc,
                "start_k_acc": start_acc, "chance": chance, "reference_budget_steps": reference_steps}
    if acc >= OVERFIT_ACC:
        return CheckResult(id=CheckId.OVERFIT, name=name, status=PASS, evidence=evidence,
                           summary=f"fitted {n} scenes to K_acc {acc:.2f} in {steps_run} steps")
    if steps < reference_steps:
        evidence["rise_bar"] = rise_bar
        if acc >= rise_bar:
            return CheckResult(id=CheckId.OVERFIT, name=name, status=PASS, evidence=evidence,
                               summary=f"fitting {n} fixed scenes: K_acc {start_acc:.2f} → {acc:.2f} in {steps} "
                                       f"steps (≥ {rise_bar:.2f}, {LEARNED_Z} binomial s.d. above the start); "
                                       f"{OVERFIT_ACC} is the target of a {reference_steps}-step probe")
        return CheckResult(id=CheckId.OVERFIT, name=name, status=SKIP, evidence=evidence,
                           summary=f"K_acc {start_acc:.2f} → {acc:.2f} on {n} fixed scenes in {steps} steps: too "
                                   f"few steps to judge memorisation (the {OVERFIT_ACC} target needs a "
                                   f"{reference_steps}-step probe)",
                           next_step="run the full diagnostic (the default config) to judge memorisation")
    return CheckResult(id=CheckId.OVERFIT, name=name, status=WARN if acc > (chance + OVERFIT_ACC) / 2 else FAIL,
                       evidence=evidence,
                       summary=f"reached only K_acc {acc:.2f} on {n} fixed scenes in {steps} steps "
                               f"(chance {chance:.2f})",
                       next_step="the model cannot even memorise a small set: check inputs, capacity and the "
                                 "K-head's gradient path")


def _probe_autocast(device: torch.device) -> AbstractContextManager[None]:
    """bf16 autocast on CUDA (the probe is ours: it need not share the run's AMP setting), none on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---------------------------------------------------------------- 9. predicted covariance
@torch.no_grad()
def check_covariance(config: DiagnosticJobConfig, model: RisNet, scenes: SceneSource) -> CheckResult:
    model.eval()
    batch = next(scenes.val_batches())
    out = model(batch.y, batch.H, batch.codes)
    eigs = out.gram_eigs.float()
    p = eigs / eigs.sum(-1, keepdim=True).clamp_min(1e-30)
    eff_rank = torch.exp(-(p * p.clamp_min(1e-30).log()).sum(-1))
    topk = (p * (torch.arange(p.shape[1], device=p.device) < batch.k[:, None])).sum(-1)
    kth = p.gather(1, (batch.k - 1)[:, None]).squeeze(1)
    condition = p[:, 0] / kth.clamp_min(1e-6)
    nmse = compute_loss(out, batch, config.phases[-1].loss_weights, config.system).terms["cov"]
    evidence = {"effective_rank_mean": float(eff_rank.mean()), "energy_in_true_top_k_mean": float(topk.mean()),
                "condition_top1_over_kth_median": float(condition.median()), "nmse": float(nmse),
                "true_k_mean": float(batch.k.float().mean())}
    summary = (f"NMSE {float(nmse):.3f}, effective rank {float(eff_rank.mean()):.2f} (true K mean "
               f"{float(batch.k.float().mean()):.2f}), energy in top-K {float(topk.mean()):.2f}")
    if float(nmse) < 1.0 and float(topk.mean()) > 0.8:
        return CheckResult(id=CheckId.COVARIANCE, name="predicted covariance", status=PASS, evidence=evidence,
                           summary=summary)
    # the bars (NMSE < 1, energy in the true top-K > 0.8) are those of the reference diagnostic's budget
    steps, reference_steps = config.total_steps, reference_training_steps()
    evidence |= {"training_steps": steps, "reference_training_steps": reference_steps}
    if steps < reference_steps:
        return CheckResult(id=CheckId.COVARIANCE, name="predicted covariance", status=SKIP, evidence=evidence,
                           summary=f"{summary}: below the bars (NMSE < 1, energy > 0.8) after {steps} training "
                                   f"steps, too few to judge (the bars hold from {reference_steps} steps)",
                           next_step="run the full diagnostic (the default config) to judge the covariance head")
    return CheckResult(id=CheckId.COVARIANCE, name="predicted covariance", status=WARN, evidence=evidence,
                       summary=summary, next_step="raise lam_cov or train the covariance head longer")


# ---------------------------------------------------------------- 10. provenance
def check_provenance(config: DiagnosticJobConfig) -> CheckResult:
    phases = [{"name": p.name, "epochs": p.epochs, "lr": p.lr, "schedule": p.schedule,
               "frozen_groups": list(p.frozen_groups), "loss_weights": p.loss_weights.model_dump(),
               "amp": p.amp, "ema_decay": p.ema_decay} for p in config.phases]
    return CheckResult(id=CheckId.PROVENANCE, name="configuration provenance", status=PASS,
                       evidence={"phases": phases, "config_sha256": config.sha256()},
                       summary="; ".join(f"{p['name']}: weights {p['loss_weights']}, frozen {p['frozen_groups']}"
                                         for p in phases))


# ---------------------------------------------------------------- verdict
def _verdict(checks: list[CheckResult]) -> Verdict:
    """The diagnostic's decision, automated. In order:
    1. any machinery check (1–6: non-finite, steps/LR, motion, dead parameters, leakage, identifiability)
       FAILs → "something else is broken": fix the first one first;
    2. learning PASSes (K_acc above the bar) → proceed to three-phase training (WARN if other checks warn);
    3. learning is SKIP (a run too short to judge it) and the overfit probe did not FAIL → PASS (WARN if other
       checks warn), with the checks left to the full diagnostic named;
    4. else the K-head is not learning: a label-indexing shift, a failed overfit probe, or "train longer",
       each with its own next step.
    A SKIP is not a reason: it never makes the verdict WARN."""
    fails = [c for c in checks if c.status == FAIL]
    reasons = [f"{c.name}: {c.summary}" for c in checks if c.status not in (PASS, SKIP)]
    skipped = [c.name for c in checks if c.status == SKIP]
    not_judged = f" (not judged at this budget: {', '.join(skipped)})" if skipped else ""
    machinery = [c for c in fails if c.id in MACHINERY_CHECKS]
    if machinery:
        first = machinery[0]
        return Verdict(status=FAIL, decision=f"fix {first.name} first: {first.next_step}", reasons=reasons)
    by_id = {c.id: c for c in checks}
    learning, overfit = by_id[CheckId.LEARNING], by_id[CheckId.OVERFIT]
    if learning.status == PASS:
        return Verdict(status=PASS if not reasons else WARN,
                       decision=f"proceed to three-phase training{not_judged}", reasons=reasons)
    if learning.status == SKIP and overfit.status != FAIL:
        return Verdict(status=PASS if not reasons else WARN,
                       decision=f"no fault found; run the full diagnostic before three-phase training{not_judged}",
                       reasons=reasons)
    if learning.evidence.get("label_shift"):
        decision = f"fix the K indexing: {learning.next_step}"
    elif overfit.status == FAIL:
        decision = f"the model cannot memorise {overfit.evidence.get('scenes')} scenes: {overfit.next_step}"
    else:
        decision = f"the K-head is not learning yet: {learning.next_step}"
    return Verdict(status=FAIL if learning.status == FAIL else WARN, decision=decision, reasons=reasons)
