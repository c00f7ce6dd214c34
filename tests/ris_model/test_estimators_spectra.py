"""ris_model.estimators spectra: MUSIC/MVDR from a factor and from a covariance, peaks, refinement (SCIENCE.md,
"Estimators and evaluation")."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from api_schemas import SystemConfig
from ris_model.estimators import (
    SearchGrid,
    SourceEstimate,
    SpectralEstimator,
    find_peaks,
    match_sources,
    music_spectrum,
    mvdr_spectrum,
    refine_peaks,
)
from ris_model.physics import steering
from ris_model.scenes import generate_scenes

C128 = torch.complex128
SYSTEM = SystemConfig()  # the default 12×12 RIS
# well-separated sources (φ deg, θ deg, r m, relative power); K = 1..5 take the first K
SOURCES = [(-40.0, 12.0, 1.2, 1.0), (25.0, -18.0, 2.5, 0.8), (-5.0, 5.0, 0.8, 0.6), (45.0, 22.0, 4.0, 0.9),
           (10.0, -25.0, 1.6, 0.7)]


@pytest.fixture(scope="module")
def grid() -> SearchGrid:
    """5° × 5° × Δ(1/r) = 0.27 m⁻¹ over the default FOV (25 × 13 × 8 points)."""
    return SearchGrid.uniform(SYSTEM, 25, 13, 8, dtype=C128)


def true_factor(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F = A·diag(√p) complex128 [1, N, k] and the truth float64 [1, k, 3] (φ rad, θ rad, r m)."""
    src = torch.tensor(SOURCES[:k], dtype=torch.float64)
    az, el = torch.deg2rad(src[:, 0]), torch.deg2rad(src[:, 1])
    A = steering(SYSTEM, az, el, src[:, 2])  # [k, N]
    F = (A * src[:, 3, None].sqrt()).T[None]
    return F, torch.stack([az, el, src[:, 2]], -1)[None]


def normalized_errors(est: SourceEstimate, truth: torch.Tensor, grid: SearchGrid) -> torch.Tensor:
    """|error| per true source and axis in grid steps (φ, θ, 1/r), float64 [B, K, 3], after Hungarian matching."""
    mask = torch.ones(truth.shape[:2], dtype=torch.bool)
    m = match_sources(est, truth[..., 0], truth[..., 1], truth[..., 2], mask)
    assert bool(m.matched.all()), "every true source must be matched"
    picked_r = truth[..., 2] + m.d_range_m
    d_inv_r = 1 / picked_r - 1 / truth[..., 2]
    steps = torch.tensor(grid.steps(), dtype=torch.float64)
    return torch.stack([m.d_azimuth, m.d_elevation, d_inv_r], -1).abs() / steps


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("form", ["factor", "covariance"])
def test_music_true_covariance_recovers_sources_within_grid_step_then_refines(grid: SearchGrid, k: int,
                                                                              form: str) -> None:
    F, truth = true_factor(k)
    X = F if form == "factor" else F @ F.mH
    estimator = SpectralEstimator(grid, "music")
    coarse = estimator.estimate(X, k, refine=False)
    fine = estimator.estimate(X, k, refine=True)
    assert int(coarse.k[0]) == k
    assert float(normalized_errors(coarse, truth, grid).max()) <= 1.0  # the nearest grid point or its neighbour
    # noise-free MUSIC peaks sit exactly on the sources; 12 halvings reach ~1/4000 of a step
    assert float(normalized_errors(fine, truth, grid).max()) < 0.02


@pytest.mark.parametrize("k", [1, 3, 5])
def test_mvdr_from_factor_recovers_sources_after_refinement(grid: SearchGrid, k: int) -> None:
    F, truth = true_factor(k)
    est = SpectralEstimator(grid, "mvdr", noise_floor=1e-4).estimate(F, k)
    # MVDR peaks are biased by the other sources' sidelobes; a tenth of a step (0.5°) is still far below the grid
    assert float(normalized_errors(est, truth, grid).max()) < 0.1


def test_music_factor_route_equals_dense_eigh(gen: torch.Generator) -> None:
    B, N, K = 3, SYSTEM.n_ris, 4
    F = torch.randn(B, N, K, generator=gen, dtype=C128)
    a = torch.randn(50, N, generator=gen, dtype=C128)
    lowrank = music_spectrum(F, a, eps=1e-13)
    dense = music_spectrum(F @ F.mH, a, K)
    # independent reference: the eigh noise projector
    U = torch.linalg.eigh(F @ F.mH).eigenvectors[..., : N - K]
    reference = 1 / (U.mH @ a.T).abs().square().sum(1)
    assert_close(lowrank, reference, rtol=1e-8, atol=0, msg="Cholesky route vs eigh (complex128, ε = 1e-13)")
    assert_close(dense, reference, rtol=1e-8, atol=0)


def test_music_factor_top_k_equals_dense_top_k(gen: torch.Generator) -> None:
    F = torch.randn(2, SYSTEM.n_ris, 5, generator=gen, dtype=C128)
    a = torch.randn(40, SYSTEM.n_ris, generator=gen, dtype=C128)
    k = torch.tensor([2, 3])
    assert_close(music_spectrum(F, a, k, eps=1e-13), music_spectrum(F @ F.mH, a, k), rtol=1e-8, atol=0,
                 msg="top-k Gram eigen-directions of F span the top-k eigenvectors of F·Fᴴ")


def test_mvdr_woodbury_equals_dense_solve(gen: torch.Generator) -> None:
    B, N, K = 3, SYSTEM.n_ris, 5
    F = torch.randn(B, N, K, generator=gen, dtype=C128)
    a = torch.randn(60, N, generator=gen, dtype=C128)
    R = F @ F.mH
    sigma2 = 1e-2 * R.diagonal(dim1=-2, dim2=-1).real.sum(-1) / N
    R_inv = torch.linalg.inv(R + sigma2[:, None, None] * torch.eye(N, dtype=C128))
    reference = 1 / torch.einsum("gn,bnm,gm->bg", a.conj(), R_inv, a).real
    assert_close(mvdr_spectrum(F, a, noise_floor=1e-2), reference, rtol=1e-9, atol=0, msg="Woodbury identity")
    assert_close(mvdr_spectrum(R, a, noise_floor=1e-2), reference, rtol=1e-9, atol=0)


def test_refined_error_is_smaller_than_grid_error(grid: SearchGrid) -> None:
    # property (doatools test_music): refinement reduces the error of random, noise-free scenes
    # separated in angle (a range gap alone may leave two sources in one beam)
    system = SYSTEM.model_copy(update={"min_separation_deg": 15.0, "min_separation_m": 10.0})
    batch = generate_scenes(system, 16, generator=torch.Generator().manual_seed(7), device="cpu")
    F = batch.covariance_factor().to(C128)
    estimator = SpectralEstimator(grid, "music")
    coarse, fine = estimator.estimate(F, batch.k, refine=False), estimator.estimate(F, batch.k)
    truth = (batch.azimuth, batch.elevation, batch.range_m, batch.mask)
    err = [match_sources(e, *truth) for e in (coarse, fine)]
    mse = [float((m.d_azimuth.square() + m.d_elevation.square())[m.matched].mean()) for m in err]
    assert mse[1] < 0.1 * mse[0]


def test_find_peaks_returns_local_maxima_best_first() -> None:
    grid = SearchGrid.uniform(SYSTEM, 7, 5, 4)
    i, j, r = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid.shape), indexing="ij")
    spec = -0.01 * (i + j + r)  # a slope falling away from the corner (0, 0, 0)
    spec[1, 1, 1], spec[5, 3, 2], spec[3, 0, 3] = 3.0, 5.0, 1.0  # (1, 1, 1) also outshines the corner
    spec[5, 3, 1] = 4.0  # a neighbour of the 5.0 peak: suppressed
    peaks = find_peaks(spec.reshape(1, -1), grid, 5)
    flat = lambda a, b, c: (a * grid.shape[1] + b) * grid.shape[2] + c  # noqa: E731
    assert peaks.index[0, :3].tolist() == [flat(5, 3, 2), flat(1, 1, 1), flat(3, 0, 3)]
    assert peaks.valid[0].tolist() == [True, True, True, False, False]  # only three local maxima
    assert_close(peaks.azimuth[0, 0], grid.azimuth[5])
    assert_close(peaks.range_m[0, 0], grid.range_m[2])


def test_find_peaks_per_scene_counts_mark_extra_slots_invalid() -> None:
    grid = SearchGrid.uniform(SYSTEM, 5, 5, 3)
    spec = torch.rand(3, grid.size, generator=torch.Generator().manual_seed(3))
    peaks = find_peaks(spec, grid, torch.tensor([1, 3, 2]))
    assert peaks.valid.sum(1).tolist() == [1, 3, 2]


def test_refine_peaks_never_lowers_the_spectrum(grid: SearchGrid) -> None:
    F, _ = true_factor(3)
    spec = music_spectrum(F, grid)
    peaks = find_peaks(spec, grid, 3)
    refined = refine_peaks(lambda a: music_spectrum(F, a), peaks, grid, n_iter=4)
    assert bool((refined.value >= peaks.value).all())


def test_music_on_covariance_without_k_raises(grid: SearchGrid) -> None:
    F, _ = true_factor(2)
    with pytest.raises(ValueError, match="needs k"):
        music_spectrum(F @ F.mH, grid)


def test_spectrum_with_wrong_element_count_raises(grid: SearchGrid) -> None:
    with pytest.raises(ValueError, match="N = 144"):
        music_spectrum(torch.zeros(1, 100, 3, dtype=C128), grid)


def test_mvdr_nonpositive_noise_floor_raises(grid: SearchGrid) -> None:
    F, _ = true_factor(1)
    with pytest.raises(ValueError, match="noise_floor"):
        mvdr_spectrum(F, grid, noise_floor=0.0)


def test_grid_ranges_are_uniform_in_inverse_range() -> None:
    g = SearchGrid.uniform(SYSTEM, 3, 3, 6)
    inv = 1 / g.range_m
    assert_close(inv.diff(), torch.full((5,), float(inv.diff()[0]), dtype=torch.float64), rtol=1e-12, atol=0)
    assert math.isclose(float(g.range_m.min()), SYSTEM.range_min_m) and math.isclose(float(g.range_m.max()), 10.0)
