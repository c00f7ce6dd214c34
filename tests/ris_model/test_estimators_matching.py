"""ris_model.estimators matching: Hungarian matching, counting report, matched RMSE, precision/recall/F1."""

from __future__ import annotations

import math

import pytest
import torch

from ris_model.estimators import SourceEstimate, Tolerances, counting_metrics, evaluate_sources, match_sources

rad = math.radians


def estimate(rows: list[list[tuple[float, float, float]]], width: int = 3) -> SourceEstimate:
    """A SourceEstimate from per-scene lists of (φ deg, θ deg, r m)."""
    B = len(rows)
    vals = torch.zeros(B, width, 3, dtype=torch.float64)
    valid = torch.zeros(B, width, dtype=torch.bool)
    for b, row in enumerate(rows):
        for j, (az, el, r) in enumerate(row):
            vals[b, j] = torch.tensor([rad(az), rad(el), r], dtype=torch.float64)
            valid[b, j] = True
    return SourceEstimate(k=valid.sum(1), azimuth=vals[..., 0], elevation=vals[..., 1], range_m=vals[..., 2],
                          valid=valid)


# two scenes: scene 0 has 2 sources, scene 1 has 3
TRUE = estimate([[(10.0, 0.0, 2.0), (-30.0, 10.0, 5.0)], [(0.0, 0.0, 1.0), (40.0, -20.0, 3.0), (-50.0, 5.0, 8.0)]])


def truth() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return TRUE.azimuth, TRUE.elevation, TRUE.range_m, TRUE.valid


def test_hungarian_matches_swapped_estimates() -> None:
    est = estimate([[(-29.0, 10.0, 5.0), (11.0, 0.0, 2.0)], [(0.0, 0.0, 1.0)]])
    m = match_sources(est, *truth())
    assert m.est_for_true[0, :2].tolist() == [1, 0]
    assert m.est_for_true[1].tolist() == [0, -1, -1]
    assert math.isclose(math.degrees(float(m.d_azimuth[0, 0])), 1.0, rel_tol=1e-9)
    assert math.isclose(math.degrees(float(m.d_azimuth[0, 1])), 1.0, rel_tol=1e-9)


def test_evaluation_on_hand_made_scenes() -> None:
    # scene 0: both sources found (errors 1° in φ and 3° in φ), plus a spurious one → K over
    # scene 1: one of three found, with a 2 m range error (outside the 1 m tolerance) → K under
    est = estimate([[(11.0, 0.0, 2.0), (-33.0, 10.0, 5.0), (60.0, 30.0, 9.0)], [(40.0, -20.0, 5.0)]])
    report = evaluate_sources(est, *truth(), k_max=5)
    assert (report.counting.k_acc, report.counting.k_under, report.counting.k_over) == (0.0, 0.5, 0.5)
    assert report.counting.confusion[2][3] == 1 and report.counting.confusion[3][1] == 1
    assert (report.n_true, report.n_estimated, report.n_matched, report.n_true_positive) == (5, 4, 3, 2)
    assert math.isclose(report.precision, 2 / 4) and math.isclose(report.recall, 2 / 5)
    assert math.isclose(report.f1, 2 * 0.5 * 0.4 / 0.9)
    assert math.isclose(report.rmse_azimuth_deg, math.sqrt((1 + 9 + 0) / 3), rel_tol=1e-9)
    assert math.isclose(report.rmse_elevation_deg, 0.0, abs_tol=1e-9)
    assert math.isclose(report.rmse_range_m, math.sqrt(4 / 3), rel_tol=1e-9)
    # the true positives: the two scene-0 pairs (the 2 m range error is outside the tolerance)
    assert math.isclose(report.tp_rmse_azimuth_deg, math.sqrt((1 + 9) / 2), rel_tol=1e-9)
    assert math.isclose(report.tp_rmse_range_m, 0.0, abs_tol=1e-9)


def test_tolerances_decide_true_positives() -> None:
    est = estimate([[(13.0, 0.0, 2.0), (-30.0, 10.0, 5.0)], []])
    assert evaluate_sources(est, *truth(), k_max=5).n_true_positive == 2
    tight = Tolerances(azimuth_deg=2.0)
    assert evaluate_sources(est, *truth(), k_max=5, tolerances=tight).n_true_positive == 1


def test_no_estimates_gives_zero_f1_and_nan_rmse() -> None:
    report = evaluate_sources(estimate([[], []]), *truth(), k_max=5)
    assert report.f1 == 0.0 and report.counting.k_under == 1.0
    assert math.isnan(report.rmse_azimuth_deg) and math.isnan(report.tp_rmse_azimuth_deg)


def test_counting_report_puts_counts_above_k_max_in_last_column() -> None:
    report = counting_metrics(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 12]), k_max=3)
    assert report.confusion[1][1] == 1 and report.confusion[2][0] == 1 and report.confusion[3][4] == 1
    assert math.isclose(report.k_acc, 1 / 3)


def test_counting_true_count_above_k_max_raises() -> None:
    with pytest.raises(ValueError, match="0..3"):
        counting_metrics(torch.tensor([4]), torch.tensor([4]), k_max=3)
