"""Evaluation of estimated sources against the truth: Hungarian matching, counting metrics, matched RMSE and
detection precision/recall/F1 at tolerances (SCIENCE.md, "Estimators and evaluation").

Owns match_sources, counting_metrics, evaluate_sources and their frozen reports. Composes
`ris_model.metrics.GeometryTally` for the squared-error sums. Angles come in radians; degrees appear only in
`_deg` names. Matching runs on the CPU (scipy), one scene at a time; everything else is vectorized.

References:
    H. W. Kuhn, "The Hungarian method for the assignment problem", Naval Res. Logist. Q. 2, 1955
    (scipy.optimize.linear_sum_assignment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ris_model.estimators.result import SourceEstimate
from ris_model.metrics import CountingTally, GeometryTally


@dataclass(frozen=True)
class Tolerances:
    """A matched estimate is a true positive when within all three: |Δφ| ≤ azimuth_deg, |Δθ| ≤ elevation_deg,
    |Δr| ≤ range_m."""

    azimuth_deg: float = 5.0
    elevation_deg: float = 5.0
    range_m: float = 1.0


@dataclass(frozen=True)
class CountingReport:
    """K_acc / K_under / K_over over n_scenes, and the confusion matrix.

    confusion[t][p] counts scenes with true K = t (0..k_max) and estimated K = p, where column k_max + 1
    collects every estimate above k_max (counting rules like MDL can return up to n − 1).
    """

    n_scenes: int
    k_acc: float
    k_under: float
    k_over: float
    confusion: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class EvaluationReport:
    """Counting, matched-pair RMSE and detection metrics of B scenes.

    RMSEs are over all Hungarian-matched pairs (min(K̂, K) per scene), whatever their error; NaN when no pair
    exists. A detection (a valid estimate) is a true positive if it is matched and within the tolerances;
    precision = TP / #estimates, recall = TP / #true sources, F1 their harmonic mean (0 when both are 0). The
    tp_rmse_* are over the true positives only: the typical error, without the matched pairs outside the
    tolerances (their share is 1 − n_true_positive / n_matched) that dominate the RMSE over all pairs.
    """

    counting: CountingReport
    n_true: int
    n_estimated: int
    n_matched: int
    n_true_positive: int
    rmse_azimuth_deg: float
    rmse_elevation_deg: float
    rmse_range_m: float
    precision: float
    recall: float
    f1: float
    tolerances: Tolerances
    tp_rmse_azimuth_deg: float = math.nan
    tp_rmse_elevation_deg: float = math.nan
    tp_rmse_range_m: float = math.nan


@dataclass(frozen=True)
class Matching:
    """Per-scene Hungarian assignment. est_for_true: int64 [B, K_true], the estimate slot matched to each true
    slot, −1 where unmatched; d_azimuth, d_elevation (radians), d_range_m (meters): float64 [B, K_true], the
    estimate minus the truth for matched pairs, 0 elsewhere; matched: bool [B, K_true]."""

    est_for_true: Tensor
    d_azimuth: Tensor
    d_elevation: Tensor
    d_range_m: Tensor
    matched: Tensor


def match_sources(estimate: SourceEstimate, azimuth: Tensor, elevation: Tensor, range_m: Tensor, mask: Tensor, *,
                  scale: tuple[float, float, float] = (math.radians(60.0), math.radians(30.0), 9.5)) -> Matching:
    """Hungarian matching of valid estimates to true sources, scene by scene.

    The cost of a pair is (Δφ/s_φ)² + (Δθ/s_θ)² + (Δr/s_r)² with `scale` = (s_φ rad, s_θ rad, s_r m); the default
    is the default system's field of view, as the old training set loss did.

    Args:
        estimate: SourceEstimate [B, S] (only `valid` slots take part).
        azimuth, elevation: float [B, K_true] radians; range_m: float [B, K_true] meters.
        mask: bool [B, K_true], True for true sources.

    Returns:
        Matching over the true slots.
    """
    B, K = mask.shape
    if estimate.azimuth.shape[0] != B:
        raise ValueError(f"estimate has {estimate.azimuth.shape[0]} scenes, the truth {B}")
    est = torch.stack([estimate.azimuth, estimate.elevation, estimate.range_m], -1).double().cpu()  # [B, S, 3]
    true = torch.stack([azimuth, elevation, range_m], -1).double().cpu()  # [B, K, 3]
    s = torch.tensor(scale, dtype=torch.float64)
    cost = (((est[:, :, None] - true[:, None]) / s) ** 2).sum(-1).numpy()  # [B, S, K]
    valid, present = estimate.valid.cpu().numpy(), mask.cpu().numpy()
    est_for_true = np.full((B, K), -1, dtype=np.int64)
    for b in range(B):
        rows, cols = np.flatnonzero(valid[b]), np.flatnonzero(present[b])
        if rows.size and cols.size:
            r, c = linear_sum_assignment(cost[b][np.ix_(rows, cols)])
            est_for_true[b, cols[c]] = rows[r]
    idx = torch.from_numpy(est_for_true)
    matched = idx >= 0
    picked = est.gather(1, idx.clamp_min(0)[..., None].expand(B, K, 3))  # [B, K, 3]
    diff = torch.where(matched[..., None], picked - true, torch.zeros_like(true))
    return Matching(est_for_true=idx, d_azimuth=diff[..., 0], d_elevation=diff[..., 1], d_range_m=diff[..., 2],
                    matched=matched)


def counting_metrics(k_true: Tensor, k_pred: Tensor, k_max: int) -> CountingReport:
    """K_acc / K_under / K_over and the confusion matrix of int64 [B] counts (true in 0..k_max)."""
    k_true, k_pred = k_true.long().cpu(), k_pred.long().cpu()
    if k_true.shape != k_pred.shape:
        raise ValueError(f"k_true {tuple(k_true.shape)} and k_pred {tuple(k_pred.shape)} differ")
    if k_true.numel() and (k_true.min() < 0 or k_true.max() > k_max):
        raise ValueError(f"true counts must be in 0..{k_max}")
    tally = CountingTally(k_max, k_min=0, overflow=True)
    tally.update(k_true, k_pred)
    rates = tally.rates()
    return CountingReport(n_scenes=tally.n, k_acc=rates["k_acc"], k_under=rates["k_under"], k_over=rates["k_over"],
                          confusion=tuple(tuple(row) for row in tally.confusion))


def evaluate_sources(estimate: SourceEstimate, azimuth: Tensor, elevation: Tensor, range_m: Tensor, mask: Tensor,
                     *, k_max: int, tolerances: Tolerances | None = None,
                     scale: tuple[float, float, float] = (math.radians(60.0), math.radians(30.0), 9.5)
                     ) -> EvaluationReport:
    """Counting, matched RMSE and precision/recall/F1 of estimated against true sources.

    Args:
        estimate: SourceEstimate [B, S]; K̂ is `estimate.k`, the estimates are its `valid` slots.
        azimuth, elevation: float [B, K_true] radians; range_m: float [B, K_true] meters; mask: bool [B, K_true]
            (e.g. a SceneBatch's fields).
        k_max: the largest true count (rows of the confusion matrix).
        tolerances: true-positive tolerances (default 5°, 5°, 1 m).
        scale: matching cost scales, see `match_sources`.

    Returns:
        EvaluationReport.
    """
    tol = tolerances or Tolerances()
    m = match_sources(estimate, azimuth, elevation, range_m, mask, scale=scale)
    tally, tp_tally = GeometryTally(), GeometryTally()
    tally.update(m.d_azimuth, m.d_elevation, m.d_range_m, m.matched)
    hit = within_tolerances(m, tol)
    tp_tally.update(m.d_azimuth, m.d_elevation, m.d_range_m, hit)
    n_true, n_est = int(mask.sum()), int(estimate.valid.sum())
    tp = int(hit.sum())
    precision, recall = tp / max(n_est, 1), tp / max(n_true, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    keys = ("rmse_azimuth_deg", "rmse_elevation_deg", "rmse_range_m")
    rmse = tally.rmse() if tally.n_sources else dict.fromkeys(keys, math.nan)
    tp_rmse = tp_tally.rmse() if tp else dict.fromkeys(keys, math.nan)
    return EvaluationReport(
        counting=counting_metrics(mask.sum(1), estimate.k, k_max), n_true=n_true, n_estimated=n_est,
        n_matched=tally.n_sources, n_true_positive=tp, precision=precision, recall=recall, f1=f1, tolerances=tol,
        **rmse, **{f"tp_{k}": v for k, v in tp_rmse.items()},
    )


def within_tolerances(m: Matching, tol: Tolerances) -> Tensor:
    """bool [B, K_true]: the matched pairs within all three tolerances (the true positives)."""
    return m.matched & (m.d_azimuth.abs() <= math.radians(tol.azimuth_deg) + 1e-12) \
        & (m.d_elevation.abs() <= math.radians(tol.elevation_deg) + 1e-12) & (m.d_range_m.abs() <= tol.range_m + 1e-12)
