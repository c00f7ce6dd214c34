"""ris_model.spectral: low-rank MUSIC, Gram eigenvalues and bounded spectral features
(SCIENCE.md, "Numerically stable spectral features", "Estimators and evaluation")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf
from scipy.optimize import linear_sum_assignment
from torch.testing import assert_close

from api_schemas import SystemConfig
from ris_model.physics import steering
from ris_model.spectral import (
    JACOBI_SWEEPS,
    gram_eigen_features,
    gram_eigenvalues,
    jacobi_eigh,
    measurement_eigen_features,
    music_denominator_lowrank,
    normalized_spectrum_features,
)
from tests.ris_model.conftest import tiny_system

F64, C128 = torch.float64, torch.complex128

# well-separated sources (φ deg, θ deg, r m, relative power); K = 1..5 take the first K
SOURCES = [(-40.0, 12.0, 1.2, 1.0), (25.0, -18.0, 2.5, 0.8), (-5.0, 5.0, 0.8, 0.6), (45.0, 22.0, 4.0, 0.9),
           (10.0, -25.0, 1.6, 0.7)]
# coarse search grid over the default FOV; range sampled uniformly in 1/r (the near-field resolution is ~uniform in 1/r)
AZ_STEP, EL_STEP = 2.0, 2.0
AZ = torch.arange(-60.0, 60.0 + 1e-9, AZ_STEP, dtype=F64)
EL = torch.arange(-30.0, 30.0 + 1e-9, EL_STEP, dtype=F64)
INV_R = torch.linspace(1 / 10.0, 1 / 0.5, 20, dtype=F64)
INV_R_STEP = float(INV_R[1] - INV_R[0])


def _grid_steering(system: SystemConfig, az_deg: torch.Tensor, el_deg: torch.Tensor, inv_r: torch.Tensor
                   ) -> tuple[torch.Tensor, tuple[int, int, int]]:
    aa, ee, rr = torch.meshgrid(torch.deg2rad(az_deg), torch.deg2rad(el_deg), inv_r, indexing="ij")
    return steering(system, aa.reshape(-1), ee.reshape(-1), 1 / rr.reshape(-1)), tuple(aa.shape)


def _true_factor(system: SystemConfig, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F = A·diag(√p) [1, N, K] (R = F·Fᴴ) and the truth [K, 4] (φ deg, θ deg, r, p)."""
    src = torch.tensor(SOURCES[:k], dtype=F64)
    a = steering(system, torch.deg2rad(src[:, 0]), torch.deg2rad(src[:, 1]), src[:, 2])  # [K, N]
    return (a.T * src[:, 3].sqrt()).unsqueeze(0), src


@pytest.fixture(scope="module")
def coarse_grid() -> tuple[torch.Tensor, tuple[int, int, int]]:
    return _grid_steering(SystemConfig(), AZ, EL, INV_R)


def _local_maxima(spec: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [k, 3] of the k highest local maxima (26-neighbourhood) of a 3D spectrum."""
    neighbourhood = nnf.max_pool3d(spec[None, None], 3, stride=1, padding=1)[0, 0]  # pads with −inf
    is_peak = spec >= neighbourhood
    idx = is_peak.nonzero()
    order = spec[is_peak].argsort(descending=True)[:k]
    return idx[order]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_music_spectrum_of_true_covariance_peaks_at_sources(k: int, coarse_grid) -> None:
    system = SystemConfig()
    F, truth = _true_factor(system, k)
    a_grid, shape = coarse_grid
    spectrum = 1 / music_denominator_lowrank(F, a_grid)[0].reshape(shape).clamp_min(1e-12)
    peaks = _local_maxima(spectrum, k)
    found = torch.stack([AZ[peaks[:, 0]], EL[peaks[:, 1]], INV_R[peaks[:, 2]]], 1)  # [k, 3]
    # match found peaks to true sources (Hungarian on normalized distance), then check each within one grid step
    err = torch.stack([(found[:, None, 0] - truth[None, :, 0]) / AZ_STEP,
                       (found[:, None, 1] - truth[None, :, 1]) / EL_STEP,
                       (found[:, None, 2] - 1 / truth[None, :, 2]) / INV_R_STEP], -1)  # [found, true, 3]
    rows, cols = linear_sum_assignment(err.square().sum(-1).numpy())
    matched = err[rows, cols].abs()
    assert torch.all(matched <= 1.0 + 1e-9), f"K={k}: peaks {found.tolist()} vs truth {truth[:, :3].tolist()}"
    # property: the K source peaks stand far above every other local maximum (a resolvable spectrum)
    all_peaks = _local_maxima(spectrum, k + 1)
    values = spectrum[tuple(all_peaks.T)]
    assert values[k - 1] > 10 * values[k], f"K={k}: peak values {values.tolist()}"


@pytest.mark.parametrize("k", [1, 3, 5])
def test_music_refined_on_fine_local_grid_is_within_fine_step(k: int, coarse_grid) -> None:
    # local refinement around each coarse peak (found without looking at the truth), fine step 0.25° / step/8
    system = SystemConfig()
    F, truth = _true_factor(system, k)
    a_grid, shape = coarse_grid
    spectrum = 1 / music_denominator_lowrank(F, a_grid)[0].reshape(shape).clamp_min(1e-12)
    fine_az, fine_el, fine_ir = 0.25, 0.25, INV_R_STEP / 8
    refined = []
    for i, j, m in _local_maxima(spectrum, k).tolist():
        az = AZ[i] + torch.arange(-8, 9, dtype=F64) * fine_az
        el = EL[j] + torch.arange(-8, 9, dtype=F64) * fine_el
        ir = INV_R[m] + torch.arange(-8, 9, dtype=F64) * fine_ir
        a_fine, fshape = _grid_steering(system, az, el, ir.clamp_min(1e-3))
        den = music_denominator_lowrank(F, a_fine)[0].reshape(fshape)
        best = torch.stack(torch.unravel_index(den.argmin(), fshape))
        refined.append([float(az[best[0]]), float(el[best[1]]), float(ir[best[2]])])
    found = torch.tensor(refined, dtype=F64)
    truth_pts = torch.stack([truth[:, 0], truth[:, 1], 1 / truth[:, 2]], 1)
    steps = torch.tensor([fine_az, fine_el, fine_ir], dtype=F64)
    err = (found[:, None, :] - truth_pts[None, :, :]).abs() / steps  # [found, true, 3]
    rows, cols = linear_sum_assignment(err.square().sum(-1).numpy())
    assert torch.all(err[rows, cols] <= 1.0 + 1e-9), f"K={k}: refined {found.tolist()} vs {truth_pts.tolist()}"


def test_music_denominator_lowrank_equals_dense_eigh(gen: torch.Generator) -> None:
    system = tiny_system()  # N = 16, K = 3: the dense N×N route is affordable here (test only)
    n, k, sigma2 = system.n_ris, 3, 1e-3
    F = torch.randn(2, n, k, generator=gen, dtype=C128) / math.sqrt(n)
    az = (2 * torch.rand(50, generator=gen, dtype=F64) - 1) * math.radians(60)
    el = (2 * torch.rand(50, generator=gen, dtype=F64) - 1) * math.radians(30)
    a = steering(system, az, el, 0.5 + 9.5 * torch.rand(50, generator=gen, dtype=F64))  # [G, N]
    R = F @ F.mH + sigma2 * torch.eye(n, dtype=C128)
    _, vecs = torch.linalg.eigh(R)
    noise = vecs[..., : n - k]  # eigenvectors of the N − K smallest eigenvalues
    dense = (noise.mH @ a.T).abs().square().sum(1)  # [B, G]: ‖E_nᴴ·a‖²
    # rtol 1e-4: the low-rank route loads FᴴF by ε·tr/K (ε = 1e-6); atol 1e-6 for values near 0
    assert_close(music_denominator_lowrank(F, a), dense, rtol=1e-4, atol=1e-6,
                 msg="aᴴ·P_n·a from the K×K Cholesky equals the dense eigh noise projector")


def test_music_denominator_lowrank_is_zero_at_sources_and_at_most_norm() -> None:
    # property: 0 ≤ aᴴ·P_n·a ≤ ‖a‖² = 1, and ≈ 0 on the signal subspace
    system = SystemConfig()
    F, truth = _true_factor(system, 3)
    a_true = steering(system, torch.deg2rad(truth[:, 0]), torch.deg2rad(truth[:, 1]), truth[:, 2])
    assert_close(music_denominator_lowrank(F, a_true)[0], torch.zeros(3, dtype=F64), rtol=0, atol=1e-5,
                 msg="steering of a true source lies in span(F) (up to the ε loading)")


# ---------------------------------------------------------------- Gram eigenvalues and features


def test_gram_eigenvalues_equal_nonzero_eigenvalues_of_dense_covariance(gen: torch.Generator) -> None:
    F = torch.randn(4, 144, 5, generator=gen, dtype=torch.complex64)
    dense = torch.linalg.eigvalsh((F @ F.mH).to(C128)).flip(-1)[:, :5]  # test only: the N×N route
    assert_close(gram_eigenvalues(F), dense, rtol=1e-5, atol=1e-6,
                 msg="eig(FᴴF) = non-zero eig(FFᴴ) (complex64 input)")


def test_gram_eigenvalues_are_descending_and_nonnegative(gen: torch.Generator) -> None:
    F = torch.randn(8, 16, 3, generator=gen, dtype=torch.complex64)
    F[:, :, 2] = 0  # rank-deficient
    eigs = gram_eigenvalues(F)
    assert torch.all(eigs[:, :-1] >= eigs[:, 1:]) and torch.all(eigs >= 0)


def _hermitian(gen: torch.Generator, n: int, case: str, batch: int = 64) -> torch.Tensor:
    """Gram matrices FᴴF [batch, n, n] (complex128): random, one pair of eigenvalues ~1e-6 apart (relative),
    rank-deficient, or eigenvalues spread over eight decades."""
    F = torch.randn(batch, 144, n, generator=gen, dtype=C128)
    if case == "close" and n >= 2:
        F[:, :, 1] = F[:, :, 0] + 1e-3 * F[:, :, 1]
    if case == "rank_deficient" and n >= 2:
        F[:, :, n // 2:] = 0
    if case == "spread":
        F = F * torch.logspace(0, -4, n, dtype=F64)
    return F.mH @ F


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 16])
@pytest.mark.parametrize("case", ["random", "close", "rank_deficient", "spread"])
def test_jacobi_eigh_matches_lapack(gen: torch.Generator, n: int, case: str) -> None:
    A = _hermitian(gen, n, case)
    eigs, V = jacobi_eigh(A, sweeps=10 if n > 6 else JACOBI_SWEEPS)
    ref = torch.linalg.eigvalsh(A)
    scale = ref.abs().amax(-1, keepdim=True)
    assert_close(eigs.sort(-1).values / scale, ref / scale, rtol=0, atol=1e-13, msg="eigenvalues (vs LAPACK)")
    eye = torch.eye(n, dtype=C128).expand_as(A)
    assert_close(V.mH @ V, eye, rtol=0, atol=1e-13, msg="orthonormal eigenvectors")
    assert_close((A @ V) / scale[..., None], (V * eigs[:, None, :]) / scale[..., None], rtol=0, atol=1e-12,
                 msg="A·v = λ·v")


@pytest.mark.parametrize("method", ["lapack", "jacobi"])
def test_gram_eigenvalues_and_gradients_match_eigvalsh(gen: torch.Generator, method: str) -> None:
    """Both eigenvector routes give eigvalsh's eigenvalues and its gradient (Hellmann–Feynman: the
    eigenvector estimate is detached, so only ∂λ/∂G = v·vᴴ flows)."""
    F = torch.randn(16, 144, 5, generator=gen, dtype=C128)
    F[:4, :, 1] = F[:4, :, 0] + 1e-4 * F[:4, :, 1]  # nearly equal pairs: still finite, still exact
    weights = torch.arange(1.0, 6.0, dtype=F64)
    F1 = F.clone().requires_grad_(True)
    eigs = gram_eigenvalues(F1, method=method)
    (eigs * weights).sum().backward()
    F2 = F.clone().requires_grad_(True)
    ref = torch.linalg.eigvalsh(F2.mH @ F2).flip(-1)
    (ref * weights).sum().backward()
    assert_close(eigs, ref, rtol=1e-12, atol=1e-12)
    assert_close(F1.grad, F2.grad, rtol=1e-9, atol=1e-9)


def _rank_one_factor() -> torch.Tensor:
    F = torch.zeros(1, 16, 3, dtype=torch.complex64)
    F[0, 5, 0] = 1.0  # all zero but one entry
    return F


@pytest.mark.parametrize("floor", [1e-3, 1e-2, 0.1])
@pytest.mark.parametrize("case", ["rank_one", "all_zero", "random", "equal"])
def test_gram_eigen_features_are_finite_and_within_unit_interval(case: str, floor: float) -> None:
    F = {
        "rank_one": _rank_one_factor(),
        "all_zero": torch.zeros(1, 16, 3, dtype=torch.complex64),
        "random": torch.randn(1, 16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.complex64),
        "equal": torch.eye(16, 3, dtype=torch.complex64).unsqueeze(0),
    }[case]
    _, feats = gram_eigen_features(F, floor=floor)
    assert torch.isfinite(feats).all()
    assert feats.min() >= 0.0 and feats.max() <= 1.0, (
        f"{case}: features {feats.tolist()} leave [0, 1] (normalized_spectrum_features docstring and docs/SCIENCE.md)")


def test_normalized_spectrum_features_log_term_of_dominant_eigenvalue_is_not_negative() -> None:
    # log(p + floor)/log(floor) < 0 for p > 1 − floor: a rank-1 spectrum makes it −1.4e-4 at floor 1e-3
    feats = normalized_spectrum_features(torch.tensor([[1.0, 0.0, 0.0]], dtype=F64), floor=1e-3)
    assert feats[0, 3] >= 0.0, f"log feature of p = 1 is {float(feats[0, 3]):.3g}"


def test_gram_eigen_features_backward_on_rank_one_factor_is_finite() -> None:
    F = _rank_one_factor().requires_grad_(True)
    _, feats = gram_eigen_features(F, floor=1e-3)
    feats.sum().backward()
    assert torch.isfinite(torch.view_as_real(F.grad)).all()


def test_measurement_eigen_features_are_bounded_and_scale_invariant(gen: torch.Generator) -> None:
    y = torch.randn(4, 16, 16, generator=gen, dtype=torch.complex64)
    f1 = measurement_eigen_features(y, floor=1e-3)
    f2 = measurement_eigen_features(y * 1000, floor=1e-3)
    assert f1.shape == (4, 2 * 16 + 1) and torch.isfinite(f1).all()
    assert_close(f1, f2, rtol=1e-5, atol=1e-6, msg="eigenvalues are normalized by their sum")
