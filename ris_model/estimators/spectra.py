"""MUSIC and MVDR spectra over a (φ, θ, r) grid, 3D peak search and local refinement
(SCIENCE.md, "Numerically stable spectral features", "Estimators and evaluation").

Two routes, the same numbers (tests pin the agreement):
- from the low-rank factor F [B, N, K] of R = F·Fᴴ, with no N×N matrix: MUSIC through the Cholesky factor of
  the K×K Gram matrix (aᴴP_n·a = ‖a‖² − ‖L⁻¹Fᴴa‖², `spectral.music_denominator_lowrank`), MVDR through
  Woodbury with a noise floor σ² (aᴴ(FFᴴ + σ²I)⁻¹a = (‖a‖² − ‖L_σ⁻¹Fᴴa‖²)/σ², L_σ = chol(FᴴF + σ²I));
- from a dense covariance R [B, N, N] (evaluation only): `eigh` for MUSIC, a linear solve for MVDR.
Batched torch on the device of the inputs. Imports torch, api_schemas and ris_model.{physics, spectral}.

References:
    R. Schmidt, "Multiple emitter location and signal parameter estimation", IEEE TAP 34(3), 1986.
    J. Capon, "High-resolution frequency-wavenumber spectrum analysis", Proc. IEEE 57(8), 1969.
    SCIENCE.md, "Numerically stable spectral features" (the low-rank identities); doatools `estimation/music.py`
    (interface, refinement test).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as nnf
from torch import Tensor

from ris_model.estimators.grid import Peaks, SearchGrid
from ris_model.estimators.result import SourceEstimate
from ris_model.physics import steering
from ris_model.spectral import music_denominator_lowrank

Form = Literal["auto", "factor", "covariance"]
SpectrumFn = Callable[[Tensor], Tensor]
_DENOMINATOR_FLOOR = 1e-12  # relative to ‖a‖²: round-off can make aᴴP_n·a slightly negative at a true source


def music_spectrum(X: Tensor, grid: SearchGrid | Tensor, k: int | Tensor | None = None, *, form: Form = "auto",
                   eps: float = 1e-6) -> Tensor:
    """MUSIC pseudo-spectrum 1 / (aᴴ·P_n·a) at every grid point.

    Args:
        X: a low-rank factor F, complex [B, N, K] with R = F·Fᴴ, or a covariance R, complex [B, N, N]
            (Hermitian). No snapshot axis: X is already a second-order statistic.
        grid: a SearchGrid, or steering vectors complex [G, N] (shared) or [B, G, N] (one set per scene).
        k: signal-subspace dimension, int or int64 [B]. Required for a covariance. For a factor, None uses all
            K columns (Cholesky route, differentiable, no eigenvectors); a value below K keeps the top-k
            eigen-directions of F·Fᴴ through the K×K Gram eigendecomposition (evaluation only).
        form: "factor" or "covariance"; "auto" treats a square X with N rows as a covariance.
        eps: relative diagonal loading of the Gram matrix (factor route), ε·tr(FᴴF)/K.

    Returns:
        real [B, G] (float64 if X or the steering is complex128, else float32), unitless, > 0.

    Raises:
        ValueError: shapes that do not match, or k missing for a covariance.
    """
    a, shared = _steering_of(grid, X)
    X = X.to(a.dtype)
    if _is_covariance(X, a, form):
        energy = _signal_energy_dense(X, a, _required_k(k, X))
        denominator = a.abs().square().sum(-1) - energy
    elif k is None and shared:
        denominator = music_denominator_lowrank(X, a[0], eps=eps)
    else:
        energy = _signal_energy_factor(X, a, k, eps)
        denominator = a.abs().square().sum(-1) - energy
    floor = _DENOMINATOR_FLOOR * a.abs().square().sum(-1)
    return 1 / torch.maximum(denominator, floor)


def mvdr_spectrum(X: Tensor, grid: SearchGrid | Tensor, *, noise_floor: float = 1e-3, form: Form = "auto") -> Tensor:
    """MVDR (Capon) spectrum 1 / (aᴴ·(R + σ²I)⁻¹·a) at every grid point.

    Args:
        X: a low-rank factor F, complex [B, N, K] (R = F·Fᴴ, Woodbury route), or a covariance R, complex
            [B, N, N] (dense solve). No snapshot axis.
        grid: a SearchGrid, or steering vectors complex [G, N] or [B, G, N].
        noise_floor: σ² relative to the mean eigenvalue of R, σ² = noise_floor·tr(R)/N (> 0), so that the
            spectrum does not depend on the scale of R and a rank-deficient R is invertible.
        form: "factor", "covariance" or "auto" (a square X with N rows is a covariance).

    Returns:
        real [B, G], in the units of R (power); ≈ p_k + σ² at an isolated source of power p_k.

    Raises:
        ValueError: noise_floor ≤ 0, or shapes that do not match.
    """
    if noise_floor <= 0:
        raise ValueError(f"noise_floor must be > 0, got {noise_floor}")
    a, _ = _steering_of(grid, X)
    X = X.to(a.dtype)
    N = a.shape[-1]
    norm2 = a.abs().square().sum(-1)  # [B or 1, G]
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    if _is_covariance(X, a, form):
        sigma2 = noise_floor * X.diagonal(dim1=-2, dim2=-1).real.sum(-1) / N  # [B]
        x = torch.linalg.solve(X + sigma2[:, None, None] * eye, a.transpose(1, 2).expand(X.shape[0], -1, -1))
        quad = (a.transpose(1, 2).conj() * x).sum(1).real  # [B, G]: aᴴR⁻¹a
        return 1 / quad
    gram = X.mH @ X  # [B, K, K]
    sigma2 = noise_floor * gram.diagonal(dim1=-2, dim2=-1).real.sum(-1) / N  # tr(FᴴF) = tr(R)
    chol = torch.linalg.cholesky(gram + sigma2[:, None, None] * eye)
    w = torch.linalg.solve_triangular(chol, X.mH @ a.transpose(1, 2), upper=False)  # [B, K, G]
    quad = (norm2 - w.abs().square().sum(1)) / sigma2[:, None]
    return 1 / torch.maximum(quad, _DENOMINATOR_FLOOR * norm2 / sigma2[:, None])


def find_peaks(spectrum: Tensor, grid: SearchGrid, k: int | Tensor) -> Peaks:
    """The k largest local maxima of a spectrum on the grid (3×3×3 neighbourhood non-maximum suppression).

    Args:
        spectrum: real [B, G] on `grid` (flat order of SearchGrid).
        grid: the grid the spectrum was computed on.
        k: peaks per scene, int or int64 [B]; the output has max(k) slots.

    Returns:
        Peaks [B, max k], best first; `valid` is False past k[b] or where fewer local maxima exist.
    """
    B, G = spectrum.shape
    if G != grid.size:
        raise ValueError(f"spectrum has {G} points, the grid {grid.size}")
    k_vec = _as_counts(k, B, spectrum.device)
    n = max(int(k_vec.max()), 1) if B else 1
    vol = spectrum.reshape(B, 1, *grid.shape)
    neighbourhood_max = nnf.max_pool3d(vol, kernel_size=3, stride=1, padding=1)  # pads with -inf
    score = torch.where(vol >= neighbourhood_max, vol, torch.full_like(vol, -torch.inf)).reshape(B, G)
    value, index = score.topk(min(n, G), dim=1)
    valid = torch.isfinite(value) & (torch.arange(value.shape[1], device=value.device) < k_vec[:, None])
    azimuth, elevation, range_m = grid.points(index)
    return Peaks(index=index, value=value, azimuth=azimuth, elevation=elevation, range_m=range_m, valid=valid)


def refine_peaks(spectrum_fn: SpectrumFn, peaks: Peaks, grid: SearchGrid, *, n_iter: int = 12) -> Peaks:
    """Local refinement of grid peaks by a 27-point pattern search in (φ, θ, 1/r).

    Each iteration evaluates the centre and its 26 neighbours at ± the current step on every axis, moves to the
    best, and halves the step when the centre was best. Steps start at half the grid steps, so a peak can move
    by about one grid step in all. Points stay inside the grid's box. The spectrum never decreases.

    Args:
        spectrum_fn: steering vectors complex [B, P, N] → spectrum real [B, P] of the same scenes, e.g.
            `lambda a: music_spectrum(F, a)`.
        peaks: grid peaks [B, k] from `find_peaks`.
        grid: the grid the peaks came from (its steps, box and system).
        n_iter: iterations (≥ 0); the final resolution is at least 2^-n_iter of a grid step.

    Returns:
        Peaks [B, k] with refined azimuth/elevation (rad), range_m (m) and value; `index` still names the grid
        point the search started from. Invalid slots are returned unchanged.
    """
    B, k = peaks.index.shape
    lo = torch.tensor([grid.azimuth[0], grid.elevation[0], 1 / grid.range_m[-1]], dtype=torch.float64)
    hi = torch.tensor([grid.azimuth[-1], grid.elevation[-1], 1 / grid.range_m[0]], dtype=torch.float64)
    lo, hi = lo.to(peaks.azimuth.device), hi.to(peaks.azimuth.device)
    offsets = _stencil(peaks.azimuth.device)  # [27, 3], the centre first
    centre = torch.stack([peaks.azimuth, peaks.elevation, 1 / peaks.range_m], -1)  # [B, k, 3]
    step = torch.tensor(grid.steps(), dtype=torch.float64, device=centre.device).expand(B, k, 3) / 2
    value = peaks.value
    for _ in range(n_iter):
        cand = torch.minimum(torch.maximum(centre[:, :, None] + offsets * step[:, :, None], lo), hi)  # [B,k,27,3]
        a = steering(grid.system, cand[..., 0], cand[..., 1], 1 / cand[..., 2]).reshape(B, k * 27, -1)
        spec = spectrum_fn(a).reshape(B, k, 27)
        best = spec.argmax(-1)  # [B, k]; ties go to the centre (index 0)
        centre = torch.where(peaks.valid[..., None], cand.gather(2, best[..., None, None].expand(B, k, 1, 3))
                             .squeeze(2), centre)
        value = torch.where(peaks.valid, spec.gather(2, best[..., None]).squeeze(2).to(value.dtype), value)
        step = torch.where((best == 0)[..., None], step / 2, step)
    return Peaks(index=peaks.index, value=value, azimuth=centre[..., 0], elevation=centre[..., 1],
                 range_m=1 / centre[..., 2], valid=peaks.valid)


class SpectralEstimator:
    """MUSIC or MVDR on a fixed grid: spectrum → k peaks → local refinement (doatools' MUSIC shape, A4).

    `estimate(X, k)` accepts a factor F [B, N, K] (preferred, no N×N matrix) or a covariance R [B, N, N].
    The number of sources k is given (from a K-head or a counting rule); this class does not count.
    Honest limit: the k best peaks are returned even when fewer sources are resolved, and two sources closer
    than a grid step can merge into one peak.
    """

    def __init__(self, grid: SearchGrid, method: Literal["music", "mvdr"] = "music", *, noise_floor: float = 1e-3,
                 refine_iters: int = 12, form: Form = "auto") -> None:
        if method not in ("music", "mvdr"):
            raise ValueError(f"method must be 'music' or 'mvdr', got {method!r}")
        self.grid, self.method, self.noise_floor = grid, method, noise_floor
        self.refine_iters, self.form = refine_iters, form

    def spectrum(self, X: Tensor, k: int | Tensor | None = None, steering_vectors: Tensor | None = None) -> Tensor:
        """Spectrum real [B, G] on the grid (or at `steering_vectors` [G, N] / [B, G, N])."""
        where = self.grid if steering_vectors is None else steering_vectors
        if self.method == "music":
            # a covariance needs k; a factor uses all its columns unless k is given
            return music_spectrum(X, where, k, form=self.form)
        return mvdr_spectrum(X, where, noise_floor=self.noise_floor, form=self.form)

    def estimate(self, X: Tensor, k: int | Tensor, *, refine: bool = True, keep_spectrum: bool = False
                 ) -> SourceEstimate:
        """Sources of B scenes from X (factor [B, N, K] or covariance [B, N, N]) and k (int or int64 [B]).

        Returns a SourceEstimate with max(k) slots; `valid` marks the k[b] peaks found for scene b.
        """
        k_vec = _as_counts(k, X.shape[0], X.device)
        # MUSIC keeps the top-k directions (for a factor with more columns than sources, too)
        music_k = k_vec if self.method == "music" else None
        spec = self.spectrum(X, music_k)
        peaks = find_peaks(spec, self.grid, k_vec)
        if refine and self.refine_iters > 0:
            peaks = refine_peaks(lambda a: self.spectrum(X, music_k, a), peaks, self.grid, n_iter=self.refine_iters)
        return SourceEstimate(k=peaks.valid.sum(1), azimuth=peaks.azimuth, elevation=peaks.elevation,
                              range_m=peaks.range_m, valid=peaks.valid, spectrum=spec if keep_spectrum else None)


def _steering_of(grid: SearchGrid | Tensor, X: Tensor) -> tuple[Tensor, bool]:
    """Steering as complex [B or 1, G, N] in the wider of X's and the steering's precision; shared or not."""
    a = grid.steering if isinstance(grid, SearchGrid) else grid
    if a.dim() not in (2, 3) or not a.is_complex():
        raise ValueError(f"steering must be complex [G, N] or [B, G, N], got {tuple(a.shape)} {a.dtype}")
    if X.dim() != 3 or X.shape[1] != a.shape[-1]:
        raise ValueError(f"X must be [B, N, K] or [B, N, N] with N = {a.shape[-1]}, got {tuple(X.shape)}")
    shared = a.dim() == 2
    if not shared and a.shape[0] != X.shape[0]:
        raise ValueError(f"per-scene steering has {a.shape[0]} scenes, X has {X.shape[0]}")
    dtype = torch.promote_types(a.dtype, X.dtype)
    return (a[None] if shared else a).to(device=X.device, dtype=dtype), shared


def _is_covariance(X: Tensor, a: Tensor, form: Form) -> bool:
    if form not in ("auto", "factor", "covariance"):
        raise ValueError(f"form must be 'auto', 'factor' or 'covariance', got {form!r}")
    if form == "auto":
        return X.shape[-1] == X.shape[-2] == a.shape[-1]
    if form == "covariance" and X.shape[-1] != X.shape[-2]:
        raise ValueError(f"a covariance must be square [B, N, N], got {tuple(X.shape)}")
    return form == "covariance"


def _required_k(k: int | Tensor | None, X: Tensor) -> Tensor:
    if k is None:
        raise ValueError("MUSIC on a covariance needs k, the signal-subspace dimension")
    return _as_counts(k, X.shape[0], X.device)


def _as_counts(k: int | Tensor, B: int, device: torch.device) -> Tensor:
    """k as int64 [B]."""
    k_vec = torch.as_tensor(k, device=device, dtype=torch.long)
    if k_vec.dim() == 0:
        return k_vec.expand(B)
    if k_vec.shape != (B,):
        raise ValueError(f"k must be an int or int64 [B] with B = {B}, got shape {tuple(k_vec.shape)}")
    return k_vec


def _signal_energy_dense(R: Tensor, a: Tensor, k: Tensor) -> Tensor:
    """‖U_sᴴ·a‖² for the top-k eigenvectors U_s of R (eigh; evaluation only), real [B, G]."""
    _, U = torch.linalg.eigh(R)  # ascending eigenvalues
    N = R.shape[-1]
    proj = U.mH @ a.transpose(1, 2)  # [B, N, G]
    in_signal = torch.arange(N, device=R.device) >= (N - k)[:, None]  # [B, N]: the k largest
    return (proj.abs().square() * in_signal[..., None]).sum(1)


def _signal_energy_factor(F: Tensor, a: Tensor, k: int | Tensor | None, eps: float) -> Tensor:
    """‖P_s^{1/2}·a‖² for the signal projector of F·Fᴴ (all columns, or its top-k directions), real [B, G]."""
    gram = F.mH @ F  # [B, K, K]
    K = gram.shape[-1]
    load = eps * gram.diagonal(dim1=-2, dim2=-1).real.sum(-1) / K
    eye = torch.eye(K, dtype=gram.dtype, device=gram.device)
    proj = F.mH @ a.transpose(1, 2)  # [B, K, G]
    if k is None:
        chol = torch.linalg.cholesky(gram + load[:, None, None] * eye)
        return torch.linalg.solve_triangular(chol, proj, upper=False).abs().square().sum(1)
    # top-k directions of F·Fᴴ: F·v_j/√λ_j for the Gram eigenpairs (λ_j, v_j), largest first
    lam, V = torch.linalg.eigh(gram + load[:, None, None] * eye)
    lam, V = lam.flip(-1), V.flip(-1)
    w = (V.mH @ proj) / lam.clamp_min(1e-300).sqrt()[..., None]  # [B, K, G]
    keep = torch.arange(K, device=F.device) < _as_counts(k, F.shape[0], F.device)[:, None]
    return (w.abs().square() * keep[..., None]).sum(1)


def _stencil(device: torch.device) -> Tensor:
    """The 27 offsets {−1, 0, 1}³, float64 [27, 3], with (0, 0, 0) first."""
    offs = [o for o in itertools.product((-1.0, 0.0, 1.0), repeat=3) if o != (0.0, 0.0, 0.0)]
    return torch.tensor([(0.0, 0.0, 0.0), *offs], dtype=torch.float64, device=device)
