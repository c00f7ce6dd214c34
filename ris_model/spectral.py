"""Numerically stable spectral tools on small matrices (DESIGN §2.4).

Owns the K-head's spectral features and the low-rank identities that replace N×N decompositions.
Rules kept here: eigenvalues only (never eigen- or singular vectors on a gradient path), float64 for small
matrices, relative floors so that every feature is bounded. The non-zero eigenvalues of R̂ = F·Fᴴ (N×N) are
the eigenvalues of the K_MAX×K_MAX Gram matrix Fᴴ·F.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gram_eigenvalues(F: Tensor) -> Tensor:
    """Eigenvalues of Fᴴ·F, float64 [B, K], descending; F: complex [B, N, K]. Equal to the non-zero
    eigenvalues of F·Fᴴ without forming it (differentiable: eigenvalue gradients stay finite)."""
    F64 = F.to(torch.complex128)
    gram = F64.mH @ F64  # [B, K, K]
    return torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0.0)


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
    return (a.abs().square().sum(-1)).unsqueeze(0) - w.abs().square().sum(1)
