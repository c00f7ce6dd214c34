"""Classical source counting: Wax–Kailath MDL and AIC, on the compressed measurements and on an oracle
uncompressed RIS array observing the same scenes (SCIENCE.md, "Estimators and evaluation").

Owns mdl, aic, sample_eigenvalues, count_sources, measurement_counts, simulate_array_snapshots and
oracle_array_counts. Batched torch on the device of the inputs; the eigendecompositions here are of small
matrices (at most min(T, n) ≤ 16 on the default system, thanks to the dual form). Imports torch and
ris_model.scenes only.

References:
    M. Wax, T. Kailath, "Detection of signals by information theoretic criteria", IEEE Trans. ASSP 33(2),
    pp. 387–392, 1985.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ris_model.scenes import SceneBatch

Criterion = Literal["mdl", "aic"]
_EIG_FLOOR = 1e-12  # relative to the largest eigenvalue: keeps log(g/a) finite on a rank-deficient spectrum


def mdl(eigs: Tensor, n_snapshots: int) -> Tensor:
    """Minimum description length estimate of the number of sources (Wax & Kailath 1985, eq. 16).

    MDL(k) = −T·(n−k)·log(g_k / a_k) + ½·k·(2n−k)·log T, with g_k, a_k the geometric and arithmetic means of
    the n−k smallest eigenvalues; K̂ = argmin over k = 0..n−1.

    Args:
        eigs: real [B, n], eigenvalues of a sample covariance made from T snapshots (any order; sorted here).
            The noise eigenvalues must be non-zero: for T < n pass the T eigenvalues of the dual Gram matrix
            (`sample_eigenvalues`), not the n − T zeros of the primal one.
        n_snapshots: T, the number of independent snapshots the covariance was averaged over.

    Returns:
        int64 [B] in 0..n−1.
    """
    return _information_criterion(eigs, n_snapshots, "mdl")


def aic(eigs: Tensor, n_snapshots: int) -> Tensor:
    """Akaike information criterion estimate of the number of sources (Wax & Kailath 1985, eq. 15).

    AIC(k) = −2·T·(n−k)·log(g_k / a_k) + 2·k·(2n−k); same arguments and return as `mdl`. AIC tends to
    overestimate as T grows (it is not consistent); MDL tends to underestimate at low SNR and small T.
    """
    return _information_criterion(eigs, n_snapshots, "aic")


def sample_eigenvalues(x: Tensor) -> tuple[Tensor, int]:
    """Non-zero eigenvalues of the sample covariance of snapshots, and the T to use with them.

    Args:
        x: complex [B, T, n]; axis 1 is the snapshot axis (rows are snapshots, as MATLAB's `mdltest`).

    Returns:
        (eigs real float64 [B, min(T, n)] descending, n_snapshots). For T ≥ n: the eigenvalues of
        (1/T)·Σ_t x_t·x_tᴴ (n×n) and T. For T < n, the dual form: the T×T Gram matrix (1/n)·X·Xᴴ (X = x[b],
        T×n) has the same non-zero eigenvalues as the n×n covariance up to scale; it is the sample covariance
        of the n rows of X (one per sensor) seen as n samples in C^T with white noise σ²·I_T, so the returned
        n_snapshots is n. The information criteria are scale-invariant.
    """
    x64 = x.to(torch.complex128)
    T, n = x.shape[1], x.shape[2]
    if T >= n:
        cov = x64.transpose(1, 2) @ x64.conj() / T  # [B, n, n]
        count = T
    else:
        cov = x64 @ x64.mH / n  # [B, T, T]: the dual Gram
        count = n
    return torch.linalg.eigvalsh(cov).flip(-1).clamp_min(0.0), count


def count_sources(x: Tensor, *, method: Criterion = "mdl") -> Tensor:
    """MDL or AIC source count from snapshots x complex [B, T, n] (axis 1 = snapshots), int64 [B].

    Uses the dual Gram form when T < n (see `sample_eigenvalues`).
    """
    eigs, n_snapshots = sample_eigenvalues(x)
    return _information_criterion(eigs, n_snapshots, method)


def measurement_counts(y: Tensor, *, method: Criterion = "mdl") -> Tensor:
    """MDL or AIC on the M×M measurement covariance R_yy = (1/L)·Σ_l y_l·y_lᴴ of compressed data (the
    classical counting baseline), int64 [B] in 0..M−1.

    Args:
        y: complex [B, L, M]; axis 1 is the snapshot axis (one RIS code per snapshot).

    Honest limit: each snapshot sees the sources through its own operator H·diag(c_l), so the signal part of
    R_yy has rank up to min(M, L·K), not K, and the noise eigenvalues are not flat; expect poor counts.
    """
    return count_sources(y, method=method)


def simulate_array_snapshots(A: Tensor, power: Tensor, snr_db: Tensor, n_snapshots: int, *,
                             generator: torch.Generator, symbols_constant: bool = False) -> Tensor:
    """Snapshots of an uncompressed N-element RIS array observing the given sources (the "oracle array").

    x_t = A·s_t + n_t, s_t ~ CN(0, diag(p)) i.i.d. over t, n_t ~ CN(0, σ²·I_N), with σ² set by the data contract's
    SNR definition (ARCHITECTURE.md) applied to this array: SNR = mean_t ‖A·s_t‖² / (N·σ²) (realized signal, per
    element).

    Args:
        A: complex [B, N, K] source steering (zero columns where absent).
        power: real [B, K] relative powers (zero where absent).
        snr_db: real [B], dB.
        n_snapshots: T.
        generator: a torch.Generator on A's device; the only randomness.
        symbols_constant: the same symbols s in every snapshot (the symbol model of
            `scenes.generate_scenes(symbols_constant=True)`), so that x_t is rank-1 but for the noise.

    Returns:
        complex64 [B, T, N]; axis 1 is the snapshot axis.
    """
    B, N, K = A.shape
    s = torch.randn((B, 1 if symbols_constant else n_snapshots, K), generator=generator, device=A.device,
                    dtype=torch.complex64)
    s = (s * power.sqrt().unsqueeze(1)).expand(B, n_snapshots, K)  # [B, T, K]
    x = s @ A.transpose(1, 2)  # [B, T, N]: row t is (A·s_t)ᵀ
    signal_power = x.abs().square().sum(-1).mean(-1)  # [B]
    sigma2 = signal_power / (N * 10 ** (snr_db / 10))
    noise = torch.randn(x.shape, generator=generator, device=A.device, dtype=torch.complex64)
    return x + noise * sigma2.sqrt()[:, None, None]


def oracle_array_counts(batch: SceneBatch, *, generator: torch.Generator, method: Criterion = "mdl",
                        symbols_constant: bool = False) -> Tensor:
    """MDL or AIC on an uncompressed N-element RIS array observing the batch's scenes.

    Same sources (A), powers, L snapshots and SNR definition as the compressed data, fresh symbols and noise
    (SceneBatch does not keep its symbols; `symbols_constant` repeats them over the snapshots). With L < N
    (16 < 144 by default) the criteria run on the L eigenvalues of the dual L×L Gram matrix with N samples
    (`sample_eigenvalues`). An upper reference for what second-order statistics allow, not an estimator of the
    compressed data.

    Returns:
        int64 [B] in 0..min(L, N)−1.
    """
    x = simulate_array_snapshots(batch.A, batch.power, batch.snr_db, batch.y.shape[1], generator=generator,
                                 symbols_constant=symbols_constant)
    return count_sources(x, method=method)


def _information_criterion(eigs: Tensor, n_snapshots: int, method: Criterion) -> Tensor:
    """argmin over k = 0..n−1 of AIC(k) or MDL(k), int64 [B]; eigs real [B, n]."""
    if method not in ("mdl", "aic"):
        raise ValueError(f"method must be 'mdl' or 'aic', got {method!r}")
    if eigs.dim() != 2 or eigs.shape[1] < 2:
        raise ValueError(f"eigs must be real [B, n] with n >= 2, got {tuple(eigs.shape)}")
    if n_snapshots < 1:
        raise ValueError(f"n_snapshots must be >= 1, got {n_snapshots}")
    lam = eigs.to(torch.float64).sort(-1, descending=True).values
    lam = lam.clamp_min(_EIG_FLOOR * lam[:, :1].clamp_min(1e-300))
    n = lam.shape[1]
    k = torch.arange(n, device=lam.device, dtype=torch.float64)  # candidate counts 0..n−1
    m = n - k  # size of the noise tail
    # tail sums of λ and log λ: tail[:, k] = Σ_{i ≥ k} (0-based, descending order)
    tail_sum = lam.flip(-1).cumsum(-1).flip(-1)
    tail_log = lam.log().flip(-1).cumsum(-1).flip(-1)
    log_ratio = tail_log / m - torch.log(tail_sum / m)  # log(g_k / a_k) ≤ 0
    fit = -n_snapshots * m * log_ratio
    if method == "mdl":
        score = fit + 0.5 * k * (2 * n - k) * math.log(n_snapshots)
    else:
        score = 2 * fit + 2 * k * (2 * n - k)
    return score.argmin(-1)
