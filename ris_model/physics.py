"""RIS near-field physics: element grid, steering, BS→RIS channel, RIS codebook (SCIENCE.md, "System model";
ARCHITECTURE.md, "The data contract").

Owns the one steering function used by data, losses and estimators. Imports torch and api_schemas only.
Conventions (public contract, ARCHITECTURE.md, "The data contract"): RIS in the x–y plane centred on the origin,
boresight +z; flat index n = i_v·N_H + i_h; a source at (φ, θ, r) sits at r·(cosθ·sinφ, sinθ, cosθ·cosφ); angles in
radians, distances in meters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from api_schemas import SystemConfig


def element_positions(system: SystemConfig, *, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    """RIS element coordinates.

    Returns:
        real [N, 3] in meters, rows (x, y, 0); row n = i_v·N_H + i_h, grid centred on the origin.
    """
    d = system.spacing_m
    i_h = torch.arange(system.n_ris_h, device=device, dtype=dtype)
    i_v = torch.arange(system.n_ris_v, device=device, dtype=dtype)
    x = (i_h - (system.n_ris_h - 1) / 2) * d
    y = (i_v - (system.n_ris_v - 1) / 2) * d
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # [N_V, N_H]: i_v major, so flat n = i_v*N_H + i_h
    return torch.stack([xx.reshape(-1), yy.reshape(-1), torch.zeros_like(xx).reshape(-1)], dim=-1)


def source_position(azimuth: Tensor, elevation: Tensor, range_m: Tensor) -> Tensor:
    """Cartesian position [..., 3] in meters of sources at (φ, θ) radians and range r meters."""
    return torch.stack(
        [
            range_m * torch.cos(elevation) * torch.sin(azimuth),
            range_m * torch.sin(elevation),
            range_m * torch.cos(elevation) * torch.cos(azimuth),
        ],
        dim=-1,
    )


def steering(system: SystemConfig, azimuth: Tensor | float, elevation: Tensor | float,
             range_m: Tensor | float) -> Tensor:
    """Near-field RIS steering vectors (public API, SCIENCE.md, "Estimators and evaluation").

    a_n(φ, θ, r) = exp(−j·k0·(‖p − e_n‖ − r)) / √N, phase relative to the RIS centre.

    Args:
        system: the RIS geometry and carrier.
        azimuth: φ in radians, any shape [...] (broadcast with the others).
        elevation: θ in radians, [...].
        range_m: r in meters, [...], > 0.

    Returns:
        complex [..., N]: complex128 for float64 inputs, else complex64. Unit norm.
    """
    azimuth, elevation, range_m = _as_tensors(azimuth, elevation, range_m)
    e = element_positions(system, device=azimuth.device, dtype=azimuth.dtype)  # [N, 3]
    k0 = 2 * math.pi / system.wavelength_m
    p = source_position(azimuth, elevation, range_m)  # [..., 3]
    phase = phase_at(p[..., 0], p[..., 1], range_m, e, k0, fresnel=system.steering_model == "fresnel")
    return _phasors(phase, e.shape[0])


def phase_at(x_m: Tensor, y_m: Tensor, range_m: Tensor, e: Tensor, k0: float, *, fresnel: bool) -> Tensor:
    """The phase of `steering`, −k0·(‖p − e_n‖ − r), real [..., N], from the source's x, y coordinates and range
    in meters ([...] each; `source_position`), element positions e [N, 3] in meters (e_z = 0) and k0 in rad/m;
    `fresnel` picks the second-order expansion in ‖e‖/r. Tensors and plain numbers only, elementwise arithmetic
    only: the [..., N]-sized part of steering, which a caller may compile."""
    # p·e_n as elementwise products: a matmul here would run in bf16 under CUDA autocast, and bf16
    # p·e (up to ~8 m²) costs ~0.05 rad of phase per element at 1 GHz
    proj = x_m.unsqueeze(-1) * e[:, 0] + y_m.unsqueeze(-1) * e[:, 1]  # [..., N]
    e2 = (e * e).sum(-1)  # [N]
    r = range_m.unsqueeze(-1)
    if fresnel:
        # second-order expansion of ‖p − e‖ − r in ‖e‖/r
        u = proj / r
        delta = -u + (e2 - u * u) / (2 * r)
    else:
        # ‖p − e‖ − r = (‖e‖² − 2 p·e) / (‖p − e‖ + r): no cancellation at large r
        dist = torch.sqrt(torch.clamp(r * r - 2 * proj + e2, min=0.0))
        delta = (e2 - 2 * proj) / (dist + r)
    return -k0 * delta


def steering_far(system: SystemConfig, azimuth: Tensor, elevation: Tensor) -> Tensor:
    """Far-field (plane-wave) RIS steering: exp(+j·k0·(x·sinφ·cosθ + y·sinθ)) / √N, complex [..., N]."""
    azimuth, elevation = _as_tensors(azimuth, elevation)
    e = element_positions(system, device=azimuth.device, dtype=azimuth.dtype)
    k0 = 2 * math.pi / system.wavelength_m
    u = torch.stack([torch.sin(azimuth) * torch.cos(elevation), torch.sin(elevation)], dim=-1)  # [..., 2]
    phase = k0 * (u[..., :1] * e[:, 0] + u[..., 1:] * e[:, 1])  # elementwise: autocast-proof (see steering)
    return _phasors(phase, e.shape[0])


def bs_response(n_antennas: int, psi: Tensor) -> Tensor:
    """BS half-wavelength ULA response b_m = exp(j·π·(m − (M−1)/2)·sin ψ)/√M, complex [..., M]; ψ radians."""
    m = torch.arange(n_antennas, device=psi.device, dtype=psi.dtype) - (n_antennas - 1) / 2
    phase = math.pi * psi.unsqueeze(-1).sin() * m
    return _phasors(phase, n_antennas)


def dft_codebook(system: SystemConfig, *, device: torch.device | str | None = None) -> Tensor:
    """The L RIS phase codes (ARCHITECTURE.md, "The data contract"), complex64 [L, N], unit modulus.

    Rows are 2D DFT beams c[n] = exp(j·2π·(p·i_h/N_H + q·i_v/N_V)) with p, q on an evenly spaced grid of
    ceil(√L) values each ({0, 3, 6, 9} for the default 12×12, L = 16), p-major, first L pairs.
    With `code_phase_bits` set, phases are rounded to that many bits.
    """
    n_side = math.ceil(math.sqrt(system.n_snapshots))
    ps = [round(i * system.n_ris_h / n_side) for i in range(n_side)]
    qs = [round(i * system.n_ris_v / n_side) for i in range(n_side)]
    pairs = [(p, q) for p in ps for q in qs][: system.n_snapshots]
    i_h = torch.arange(system.n_ris_h, dtype=torch.float64, device=device)
    i_v = torch.arange(system.n_ris_v, dtype=torch.float64, device=device)
    ivv, ihh = torch.meshgrid(i_v, i_h, indexing="ij")
    ihh, ivv = ihh.reshape(-1), ivv.reshape(-1)
    pq = torch.tensor(pairs, dtype=torch.float64, device=device)  # [L, 2]
    phase = 2 * math.pi * (pq[:, :1] * ihh / system.n_ris_h + pq[:, 1:] * ivv / system.n_ris_v)  # [L, N]
    if system.code_phase_bits is not None:
        step = 2 * math.pi / 2**system.code_phase_bits
        phase = torch.round(phase / step) * step
    return torch.polar(torch.ones_like(phase), phase).to(torch.complex64)


def _phasors(phase: Tensor, n: int) -> Tensor:
    """exp(j·phase)/√n, complex [...]; the modulus is a broadcast scalar, not a [...]-sized fill."""
    modulus = torch.full((), 1 / math.sqrt(n), dtype=phase.dtype, device=phase.device)
    return torch.polar(modulus.expand_as(phase), phase)


def _as_tensors(*values: Tensor | float) -> tuple[Tensor, ...]:
    tensors = [v if isinstance(v, Tensor) else torch.as_tensor(v, dtype=torch.float64) for v in values]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    if any(not t.is_floating_point() for t in tensors):
        raise TypeError("azimuth, elevation and range must be real floating-point (radians, meters)")
    device = tensors[0].device
    return tuple(t.to(device=device, dtype=dtype) for t in torch.broadcast_tensors(*tensors))
