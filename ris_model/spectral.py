"""Numerically stable spectral tools on small matrices (SCIENCE.md, "Numerically stable spectral features").

Owns the K-head's spectral features and the low-rank identities that replace N×N decompositions.
Rules kept here: eigenvalues only (never eigen- or singular vectors on a gradient path), float64 for small
matrices, relative floors so that every feature is bounded. The non-zero eigenvalues of R̂ = F·Fᴴ (N×N) are
the eigenvalues of the K_MAX×K_MAX Gram matrix Fᴴ·F.

The Gram spectrum is on the training path, so on CUDA it must not synchronize with the host (a host
sync in the middle of the forward stalls the GPU while the CPU issues the rest of the step, and it forbids CUDA
graph capture). cuSOLVER's eigensolvers check their result on the host; a batched cyclic Jacobi with a fixed
number of sweeps does not. The eigenvalues are then λ_i = v_iᴴ·G·v_i with the eigenvectors detached: the
Hellmann–Feynman form, whose gradient ∂λ_i/∂G = v_i·v_iᴴ is exactly the eigenvalue gradient (nothing flows
through the eigenvectors). Reference: Golub & Van Loan, "Matrix Computations", §8.5 (parallel Jacobi).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ris_model.accel.cuda_graphs import compiled_on_cuda

#: sweeps of the cyclic Jacobi: convergence is quadratic; 5 reach machine precision for n ≤ 6 even with a pair of
#: eigenvalues 1e-6 apart (tests/ris_model/test_spectral.py), one more for margin
JACOBI_SWEEPS = 6


def gram_eigenvalues(F: Tensor, *, method: str | None = None) -> Tensor:
    """Eigenvalues of Fᴴ·F, float64 [B, K], descending; F: complex [B, N, K]. Equal to the non-zero
    eigenvalues of F·Fᴴ without forming it (differentiable: eigenvalue gradients stay finite).
    `method`: how the (detached) eigenvectors are found, see hermitian_eigenvectors."""
    F64 = F.to(torch.complex128)
    gram = F64.mH @ F64  # [B, K, K]
    with torch.no_grad():
        V = hermitian_eigenvectors(gram.detach(), method=method)
    eigs = ((gram @ V) * V.conj()).sum(-2).real  # λ_i = v_iᴴ·G·v_i (Hellmann–Feynman)
    return eigs.sort(-1, descending=True).values.clamp_min(0.0)


def hermitian_eigenvectors(A: Tensor, *, method: str | None = None) -> Tensor:
    """Eigenvectors (columns, in no particular order) of Hermitian A [B, n, n], without gradient.

    method "jacobi" (the default on CUDA: no host sync, capturable in a CUDA graph) or "lapack"
    (torch.linalg.eigh: the default on the CPU, where it does not synchronize anything)."""
    method = method or ("jacobi" if A.is_cuda else "lapack")
    if method == "lapack":
        vectors: Tensor = torch.linalg.eigh(A).eigenvectors
        return vectors
    return jacobi_eigh(A)[1]


def jacobi_eigh(A: Tensor, sweeps: int = JACOBI_SWEEPS) -> tuple[Tensor, Tensor]:
    """Cyclic Jacobi for a batch of small Hermitian matrices A [B, n, n] (complex or real):
    (eigenvalues [B, n], eigenvectors [B, n, n] as columns), unsorted, float64/complex128. No host sync.

    Round-robin ordering: each round rotates n/2 disjoint pairs at once, n − 1 rounds a sweep (odd n is padded
    with a decoupled zero row). The matrix is kept permuted so that round r's pairs are the adjacent positions
    (2i, 2i + 1); a rotation is then elementwise arithmetic on 2×2 blocks (`_jacobi_round`, one compiled
    kernel chain on CUDA), in real arithmetic (no complex kernels needed)."""
    B, n, _ = A.shape
    m = n + n % 2
    A = A.to(torch.complex128)
    if m != n:
        A = torch.nn.functional.pad(A, (0, 1, 0, 1))
    first, steps, keep = _jacobi_schedule(n, A.device)
    A = A[:, first][:, :, first]
    ar, ai = A.real.contiguous(), A.imag.contiguous()
    vr = torch.eye(m, dtype=torch.float64, device=A.device)[:, first].expand(B, m, m).contiguous()
    vi = torch.zeros_like(vr)
    for _ in range(sweeps):
        for step in steps:
            ar, ai, vr, vi = _jacobi_round(ar, ai, vr, vi, step)
    eigs = ar.diagonal(dim1=-2, dim2=-1)[:, keep]
    return eigs, torch.complex(vr[:, :n], vi[:, :n])[:, :, keep]


@functools.lru_cache(maxsize=16)
def _jacobi_schedule(n: int, device: torch.device) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """Round-robin (circle method) over m = n rounded up to even, as index tensors on `device` (made once: no
    host→device copy per call, which a CUDA graph capture would forbid): the first round's order (pairs at
    positions 2i, 2i + 1), the gather taking each round's order to the next one's (the last back to the first,
    so that a sweep is a cycle) and the positions to keep at the end (all but the padding index n)."""
    m = n + n % 2
    players, orders = list(range(m)), []
    for _ in range(m - 1):
        orders.append([x for i in range(m // 2) for x in (players[i], players[m - 1 - i])])
        players = [players[0], players[-1], *players[1:-1]]
    steps = [[orders[r].index(x) for x in orders[(r + 1) % (m - 1)]] for r in range(m - 1)]
    keep = [i for i, x in enumerate(orders[0]) if x < n]

    def index(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return index(orders[0]), tuple(index(s) for s in steps), index(keep)


@compiled_on_cuda
def _jacobi_round(ar: Tensor, ai: Tensor, vr: Tensor, vi: Tensor, step: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Jacobi round on A = ar + i·ai (pairs at positions 2i, 2i + 1) and the eigenvector estimate
    V = vr + i·vi: A ← UᴴAU, V ← VU with U the block-diagonal of the pairs' 2×2 rotations, then the gather
    `step` to the next round's order. Each rotation zeroes its pair's off-diagonal entry; |angle| ≤ π/4."""
    B, m, _ = ar.shape
    h = m // 2
    blocks_r, blocks_i = ar.reshape(B, h, 2, h, 2), ai.reshape(B, h, 2, h, 2)
    pairs = torch.arange(h, device=ar.device)
    a = blocks_r[:, pairs, 0, pairs, 0]
    b = blocks_r[:, pairs, 1, pairs, 1]
    cr, ci = blocks_r[:, pairs, 0, pairs, 1], blocks_i[:, pairs, 0, pairs, 1]
    abs_c = torch.sqrt(cr * cr + ci * ci)
    inv = 1 / abs_c.clamp_min(1e-300)
    er, ei = torch.where(abs_c > 0, cr * inv, 1.0), ci * inv  # e^{iφ} of the off-diagonal entry
    d = a - b
    theta = 0.5 * torch.atan2(2 * abs_c * torch.where(d < 0, -1.0, 1.0), d.abs())
    cs, sn = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cs)
    # U_i = [[cos, −e^{iφ}·sin], [e^{−iφ}·sin, cos]], [B, h, 2 (row), 2 (column)]
    ur = torch.stack([torch.stack([cs, -er * sn], -1), torch.stack([er * sn, cs], -1)], -2)[:, None]
    ui = torch.stack([torch.stack([zero, -ei * sn], -1), torch.stack([-ei * sn, zero], -1)], -2)[:, None]

    def times_u(xr: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:  # X·U for X [B, rows, m]
        xr5, xi5 = xr.reshape(B, -1, h, 2, 1), xi.reshape(B, -1, h, 2, 1)
        yr = (xr5 * ur - xi5 * ui).sum(-2)
        yi = (xr5 * ui + xi5 * ur).sum(-2)
        return yr.reshape(B, -1, m), yi.reshape(B, -1, m)

    ar, ai = times_u(ar, ai)
    vr, vi = times_u(vr, vi)
    tr, ti = times_u(ar.transpose(1, 2), -ai.transpose(1, 2))  # Uᴴ·X = (Xᴴ·U)ᴴ
    ar, ai = tr.transpose(1, 2), -ti.transpose(1, 2)
    return ar[:, step][:, :, step], ai[:, step][:, :, step], vr[:, :, step], vi[:, :, step]


def normalized_spectrum_features(eigs: Tensor, *, floor: float) -> Tensor:
    """Bounded features of a non-negative spectrum eigs [B, n] (descending), float64 [B, 2n + 1]:
    λ/Σλ in [0, 1]; log((λ/Σλ + floor)/(1 + floor))/log(floor/(1 + floor)) in [0, 1];
    effective rank exp(H(λ/Σλ))/n in (0, 1]."""
    n = eigs.shape[-1]
    p = eigs / eigs.sum(-1, keepdim=True).clamp_min(1e-30)
    logp = torch.log((p + floor) / (1 + floor)) / math.log(floor / (1 + floor))
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1, keepdim=True)
    return torch.cat([p, logp, torch.exp(entropy) / n], -1)


def gram_eigen_features(F: Tensor, *, floor: float) -> tuple[Tensor, Tensor]:
    """(eigenvalues [B, K] descending, bounded features [B, 2K + 1]) of R̂ = F·Fᴴ via its Gram matrix."""
    eigs = gram_eigenvalues(F)
    return eigs, normalized_spectrum_features(eigs, floor=floor)


def measurement_eigen_features(y: Tensor, *, floor: float) -> Tensor:
    """Bounded spectral features [B, 2M + 1] of the measurement covariance R_yy = (1/L)·Σ_l y_l·y_lᴴ.

    y: complex [B, L, M]; axis 1 is the snapshot axis. Input-only (no parameters upstream)."""
    y64 = y.detach().to(torch.complex128)
    ryy = y64.transpose(1, 2) @ y64.conj() / y.shape[1]  # [B, M, M]
    eigs = torch.linalg.eigvalsh(ryy).flip(-1).clamp_min(0.0)
    return normalized_spectrum_features(eigs, floor=floor)


def feature_sizes(k_max: int, n_bs_antennas: int) -> int:
    """Width of the K-head's spectral input: Gram features plus measurement features."""
    return (2 * k_max + 1) + (2 * n_bs_antennas + 1)


def music_denominator_lowrank(F: Tensor, a: Tensor, *, eps: float = 1e-6) -> Tensor:
    """aᴴ·P_n·a for the noise projector P_n = I − F(FᴴF + εI)⁻¹Fᴴ, without any N×N matrix.

    Args:
        F: complex [B, N, K] low-rank factor of R̂ = F·Fᴴ.
        a: complex [G, N] steering vectors.
    Returns:
        real [B, G]: ‖a‖² − ‖L⁻¹·Fᴴ·a‖² with L = chol(FᴴF + ε·tr(FᴴF)/K·I).
    """
    gram = F.mH @ F  # [B, K, K]
    k = gram.shape[-1]
    load = eps * gram.diagonal(dim1=-2, dim2=-1).real.sum(-1) / k
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    chol = torch.linalg.cholesky(gram + load[:, None, None] * eye)
    proj = F.mH @ a.T.unsqueeze(0)  # [B, K, G]
    w = torch.linalg.solve_triangular(chol, proj, upper=False)
    denominator: Tensor = (a.abs().square().sum(-1)).unsqueeze(0) - w.abs().square().sum(1)
    return denominator
