"""Numerical stochastic Cramér–Rao bound for the compressed RIS measurement model (ARCHITECTURE.md, "The data contract";
SCIENCE.md, "Estimators and evaluation").

Model: y_l = G_l·A(η)·s_l + n_l, G_l = H·diag(c_l), s_l ~ CN(0, diag(p)) i.i.d. over l, n_l ~ CN(0, σ²·I_M),
σ² known. y_l is zero-mean Gaussian with a covariance that differs per snapshot,
C_l = G_l·A·P·Aᴴ·G_lᴴ + σ²·I, and the Slepian–Bangs formula gives
    FIM_ij = Σ_l tr(C_l⁻¹·∂C_l/∂ξ_i·C_l⁻¹·∂C_l/∂ξ_j)
for ξ = (φ_1..φ_K, θ_1..θ_K, r_1..r_K, p_1..p_K): the 3K location parameters and the K source powers as
nuisance parameters (unknown, estimated jointly; σ² is known). CRB = FIM⁻¹; the location blocks of the
inverse include the loss from the unknown powers. ∂a/∂(φ, θ, r) is the forward-mode autograd derivative of
`ris_model.physics.steering` itself, in float64/complex128, so the bound and the estimators share one model.
Imports torch, api_schemas and ris_model.physics.

References:
    S. M. Kay, Fundamentals of Statistical Signal Processing: Estimation Theory, 1993, §3.9 (Slepian–Bangs).
    P. Stoica, A. Nehorai, "Performance study of conditional and unconditional direction-of-arrival
    estimation", IEEE Trans. ASSP 38(10), 1990 (the single-source closed form used in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp

from api_schemas import SystemConfig
from ris_model.physics import steering


@dataclass(frozen=True)
class CRBResult:
    """Per-source square-root CRBs of B scenes (NaN in absent slots).

    azimuth_deg, elevation_deg: float64 [B, K] degrees; range_m: float64 [B, K] meters; mask: bool [B, K];
    noise_var: float64 [B], the σ² used; fim: float64 [B, 4K, 4K], parameters ordered (φ_1..φ_K, θ_1..θ_K,
    r_1..r_K, p_1..p_K) in radians, meters and power units (absent slots decoupled with unit diagonal).
    """

    azimuth_deg: Tensor
    elevation_deg: Tensor
    range_m: Tensor
    mask: Tensor
    noise_var: Tensor
    fim: Tensor


def crb_compressed(system: SystemConfig, H: Tensor, codes: Tensor, azimuth: Tensor, elevation: Tensor,
                   range_m: Tensor, power: Tensor, mask: Tensor, *, snr_db: Tensor | None = None,
                   noise_var: Tensor | None = None, chunk_size: int = 64) -> CRBResult:
    """Stochastic CRB of (φ, θ, r) per source for the compressed measurements, powers as nuisance.

    Args:
        system: RIS geometry for `steering`.
        H: complex [B, M, N] BS→RIS channel.
        codes: complex [B, L, N] RIS codes; axis 1 is the snapshot axis (L snapshots, one code each).
        azimuth, elevation: float [B, K] radians; range_m: float [B, K] meters; power: float [B, K] (> 0 where
            present); mask: bool [B, K], True for present sources (e.g. a SceneBatch's fields).
        snr_db: real [B] dB (the data contract's definition, in expectation over the symbols):
            σ² = (1/L)·Σ_l tr(G_l·A·P·Aᴴ·G_lᴴ) / (M·10^(snr_db/10)). Give exactly one of snr_db, noise_var.
        noise_var: real [B], σ² per antenna, in the units of |y|².
        chunk_size: scenes per chunk (memory ≈ chunk·L·4K·M²·16 bytes).

    Returns:
        CRBResult. A singular FIM (unidentifiable geometry) gives inf or NaN in the affected entries.

    Raises:
        ValueError: both or neither of snr_db and noise_var, or shapes that do not match.
    """
    if (snr_db is None) == (noise_var is None):
        raise ValueError("give exactly one of snr_db and noise_var")
    B, K = mask.shape
    if H.dim() != 3 or codes.shape[0] != B or H.shape[0] != B or H.shape[2] != codes.shape[2]:
        raise ValueError(f"expected H [B, M, N] and codes [B, L, N] with B = {B}; got {tuple(H.shape)}, "
                         f"{tuple(codes.shape)}")
    parts = []
    for start in range(0, B, chunk_size):
        sl = slice(start, min(start + chunk_size, B))
        level = (snr_db if snr_db is not None else noise_var)[sl]  # type: ignore[index]
        parts.append(_fim_chunk(system, H[sl], codes[sl], azimuth[sl], elevation[sl], range_m[sl], power[sl],
                                mask[sl], level, snr_db is not None))
    fim = torch.cat([p[0] for p in parts])
    sigma2 = torch.cat([p[1] for p in parts])
    crb = _inverse_diagonal(fim)  # [B, 4K]
    root = torch.where(mask.repeat(1, 4).to(crb.device), crb.clamp_min(0).sqrt(), torch.full_like(crb, math.nan))
    return CRBResult(azimuth_deg=torch.rad2deg(root[:, :K]), elevation_deg=torch.rad2deg(root[:, K:2 * K]),
                     range_m=root[:, 2 * K:3 * K], mask=mask, noise_var=sigma2, fim=fim)


def steering_jacobian(system: SystemConfig, azimuth: Tensor, elevation: Tensor, range_m: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """a and its partial derivatives ∂a/∂φ, ∂a/∂θ, ∂a/∂r by forward-mode autograd of `physics.steering`.

    Args: float [...] radians / meters (cast to float64). Returns: four complex128 [..., N] (per rad, per m).
    """
    az, el, r = (t.to(torch.float64) for t in torch.broadcast_tensors(azimuth, elevation, range_m))
    one = torch.ones_like(az)
    a, d_az = jvp(lambda x: steering(system, x, el, r), (az,), (one,))
    _, d_el = jvp(lambda x: steering(system, az, x, r), (el,), (one,))
    _, d_r = jvp(lambda x: steering(system, az, el, x), (r,), (one,))
    return a, d_az, d_el, d_r


def _fim_chunk(system: SystemConfig, H: Tensor, codes: Tensor, azimuth: Tensor, elevation: Tensor,
               range_m: Tensor, power: Tensor, mask: Tensor, level: Tensor, level_is_snr: bool
               ) -> tuple[Tensor, Tensor]:
    """FIM float64 [b, 4K, 4K] and σ² [b] for one chunk of scenes."""
    b, K = mask.shape
    present = mask.to(torch.float64)
    r_safe = torch.where(mask, range_m.to(torch.float64), torch.ones_like(range_m, dtype=torch.float64))
    a, d_az, d_el, d_r = steering_jacobian(system, azimuth, elevation, r_safe)  # each [b, K, N]
    G = H.to(torch.complex128)[:, None] * codes.to(torch.complex128)[:, :, None, :]  # [b, L, M, N]
    D = G @ a.transpose(1, 2)[:, None]  # [b, L, M, K]
    dD = [G @ d.transpose(1, 2)[:, None] for d in (d_az, d_el, d_r)]  # 3 × [b, L, M, K]
    p = power.to(torch.float64) * present  # [b, K]
    M = H.shape[1]
    signal = (D * p[:, None, None]) @ D.mH  # [b, L, M, M]
    if level_is_snr:
        sigma2 = signal.diagonal(dim1=-2, dim2=-1).real.sum(-1).mean(-1) / (M * 10 ** (level.double() / 10))
    else:
        sigma2 = level.to(torch.float64)
    eye = torch.eye(M, dtype=signal.dtype, device=signal.device)
    C_inv = torch.linalg.inv(signal + sigma2[:, None, None, None] * eye)  # [b, L, M, M]
    # ∂C/∂x_k = p_k·(ḋ_k·d_kᴴ + d_k·ḋ_kᴴ) for x ∈ (φ, θ, r); ∂C/∂p_k = d_k·d_kᴴ (zero for absent sources)
    derivs = []
    for dd in dD:
        term = dd.movedim(-1, 2)[..., :, None] * D.conj().movedim(-1, 2)[..., None, :]  # [b, L, K, M, M]
        derivs.append((term + term.mH) * p[:, None, :, None, None])
    Dk = D.movedim(-1, 2)  # [b, L, K, M]
    derivs.append(Dk[..., :, None] * Dk.conj()[..., None, :] * present[:, None, :, None, None])
    dC = torch.cat(derivs, 2)  # [b, L, 4K, M, M]
    W = C_inv[:, :, None] @ dC  # [b, L, 4K, M, M]: C⁻¹·∂C
    fim = torch.einsum("blpij,blqji->bpq", W, W).real  # Σ_l tr(W_p·W_q)
    absent = (~mask).repeat(1, 4).to(torch.float64)  # [b, 4K]
    return fim + torch.diag_embed(absent), sigma2


def _inverse_diagonal(fim: Tensor) -> Tensor:
    """diag(FIM⁻¹) float64 [B, P], with Jacobi scaling (FIM entries mix radians, meters and powers)."""
    d = fim.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()  # [B, P]
    scaled = fim * d[:, :, None] * d[:, None, :]
    return torch.linalg.inv(scaled).diagonal(dim1=-2, dim2=-1) * d * d
