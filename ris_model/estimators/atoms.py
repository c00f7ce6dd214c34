"""Effective atoms through the known sensing operator, shared by SOMP and the polish (SCIENCE.md, "The network",
"Estimators and evaluation").

Owns: `responses` (b_l(p) = H·diag(c_l)·a(p) for positions p), `solve_ls` (per-snapshot least squares of the
measurements on a set of atoms), `refine_atom` (the shrinking 27-point stencil search of one atom's position),
`noise_var_from_snr` and `fov_box` (the search bounds). Positions are (φ, θ, 1/r) in radians and 1/m. Imports torch, the
estimators' grid and spectra (the stencil) and ris_model.physics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ris_model.estimators.grid import SearchGrid
from ris_model.estimators.spectra import _stencil
from ris_model.physics import steering

_STENCIL = _stencil(torch.device("cpu"))


def refine_atom(ops: Tensor, target: Tensor, p: Tensor, steps: Tensor, box: tuple[Tensor, Tensor],
                grid: SearchGrid, n_iter: int) -> Tensor:
    """Shrinking-stencil search of one atom's (φ, θ, 1/r) [b, 3] maximizing Σ_l |b_lᴴ t_l|²/‖b_l‖² for the
    targets t [b, L, M]: 27 points at ± step per axis, move to the best, halve the step, n_iter times."""
    offsets = _STENCIL.to(p.device)  # [P, 3], centre first
    step = (steps / 2).expand_as(p).clone()
    target = target.to(torch.complex64)
    for _ in range(n_iter):
        cand = torch.minimum(torch.maximum(p[:, None] + offsets * step[:, None], box[0]), box[1])  # [b, 27, 3]
        resp = responses(ops, grid, cand)  # [b, L, M, 27]
        corr = (target.conj().unsqueeze(2) @ resp).squeeze(2)  # [b, L, 27], conjugate of b_lᴴ·t_l
        power = torch.view_as_real(resp).square().sum((2, -1))  # [b, L, 27] ‖b_l‖² (no complex abs pass)
        score = (torch.view_as_real(corr).square().sum(-1) / power.clamp_min(1e-30)).sum(1)  # [b, 27]
        best = score.argmax(1)
        p = cand[torch.arange(p.shape[0], device=p.device), best]
        step = step / 2  # a shrinking stencil: resolution 2^-n of the start, reach twice the start
    return p


def responses(ops: Tensor, grid: SearchGrid, p: Tensor) -> Tensor:
    """Effective atoms H·diag(c_l)·a(φ, θ, r) for params p float64 [b, P, 3] → complex64 [b, L, M, P].

    The steering is evaluated in float32 (phase error ~1e-6 rad, far below the complex64 product's), and the
    L·M operator rows of a scene meet its P atoms in one product: broadcasting the atoms over the snapshots
    copied them L times and ran L-times smaller products, 2× slower on the CPU (the polish's main cost)."""
    a = steering(grid.system, p[..., 0].float(), p[..., 1].float(), (1 / p[..., 2]).float())  # [b, P, N] c64
    b, L, M, N = ops.shape
    return (ops.reshape(b, L * M, N) @ a.transpose(1, 2)).reshape(b, L, M, -1)


def solve_ls(y: Tensor, Phi: Tensor) -> tuple[Tensor, Tensor]:
    """min_x ‖y_l − Φ_l·x_l‖ per snapshot for y [..., L, M], Φ [..., L, M, k]: (coef [..., L, k], residual)."""
    gram = Phi.mH @ Phi  # [..., L, k, k]
    k = gram.shape[-1]
    load = 1e-10 * gram.diagonal(dim1=-2, dim2=-1).real.mean(-1).clamp_min(1e-300)
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    coef = torch.cholesky_solve((Phi.mH @ y.unsqueeze(-1)),
                                torch.linalg.cholesky(gram + load[..., None, None] * eye)).squeeze(-1)  # [..., L, k]
    return coef, y - (Phi @ coef.unsqueeze(-1)).squeeze(-1)


def noise_var_from_snr(y: Tensor, snr_db: Tensor) -> Tensor:
    """σ² per antenna, float64 [B], of measurements y [B, L, M] at SNR snr_db [B] (the data contract's definition):
    ‖Y‖²_F / (L·M·(1 + 10^(snr_db/10)))."""
    B, L, M = y.shape
    total = y.to(torch.complex128).abs().square().sum((1, 2))
    return total / (L * M * (1 + 10 ** (snr_db.to(y.device, torch.float64) / 10)))


def fov_box(grid: SearchGrid, device: torch.device) -> tuple[Tensor, Tensor]:
    """(lo, hi) float64 [3] of (φ, θ, 1/r) over the grid's field of view."""
    lo = torch.tensor([grid.azimuth[0], grid.elevation[0], 1 / grid.range_m[-1]], dtype=torch.float64, device=device)
    hi = torch.tensor([grid.azimuth[-1], grid.elevation[-1], 1 / grid.range_m[0]], dtype=torch.float64, device=device)
    return lo, hi
