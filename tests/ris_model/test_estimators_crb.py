"""ris_model.estimators CRB: the numerical Slepian–Bangs bound against a closed form, and its behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from api_schemas import SystemConfig
from ris_model.estimators import crb_compressed, steering_jacobian
from ris_model.physics import steering
from ris_model.scenes import generate_scenes

C128 = torch.complex128


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0])
def test_crb_matches_single_source_stochastic_closed_form(snr_db: float) -> None:
    """Uncompressed 12×2 array (H = I, all codes 1), one far source (r = 1000 m) at φ = 20°, θ = 0, T = 100.

    Closed form (Stoica & Nehorai 1990, single source, stochastic model; the ULA case is
    CRB(φ) = 6·(1 + 1/(Nρ)) / (T·ρ·π²·cos²φ·N·(N²−1))): with ρ the per-element SNR and x_n the element
    abscissae, CRB(φ) = (1 + 1/(Nρ)) / (2·T·ρ·k0²·cos²φ·Σ_n x_n²), and at θ = 0 CRB(θ) has Σ_n y_n² instead.
    The two rows are symmetric about y = 0, so φ, θ, r and the power decouple (r only to O(1/r)).
    """
    system = SystemConfig(n_ris_h=12, n_ris_v=2)
    N, T, phi = system.n_ris, 100, math.radians(20.0)
    rho = 10 ** (snr_db / 10)
    res = crb_compressed(system, torch.eye(N, dtype=C128)[None], torch.ones(1, T, N, dtype=C128),
                         torch.tensor([[phi]]), torch.tensor([[0.0]]), torch.tensor([[1000.0]]),
                         torch.tensor([[0.7]]), torch.tensor([[True]]), snr_db=torch.tensor([snr_db]))
    k0, d = 2 * math.pi / system.wavelength_m, system.spacing_m
    sum_x2 = 2 * float(((torch.arange(12) - 5.5) * d).square().sum())
    sum_y2 = N * (d / 2) ** 2
    kappa = 1 + 1 / (N * rho)
    crb_phi = kappa / (2 * T * rho * k0**2 * math.cos(phi) ** 2 * sum_x2)
    crb_theta = kappa / (2 * T * rho * k0**2 * sum_y2)
    # rtol: the exact spherical model differs from the plane wave by O(aperture/r) ~ 1e-3 in phase slope
    assert math.isclose(float(res.azimuth_deg), math.degrees(math.sqrt(crb_phi)), rel_tol=1e-4)
    assert math.isclose(float(res.elevation_deg), math.degrees(math.sqrt(crb_theta)), rel_tol=1e-4)


def test_crb_decreases_with_snr() -> None:
    system = SystemConfig()
    batch = generate_scenes(system, 4, generator=torch.Generator().manual_seed(21), device="cpu")
    bounds = []
    for snr in (-5.0, 5.0, 15.0, 25.0):
        res = crb_compressed(system, batch.H, batch.codes, batch.azimuth, batch.elevation, batch.range_m,
                             batch.power, batch.mask, snr_db=torch.full((4,), snr))
        bounds.append(torch.stack([res.azimuth_deg, res.elevation_deg, res.range_m])[:, batch.mask])
    for lower, higher in zip(bounds, bounds[1:], strict=False):
        assert bool((higher < lower).all()), "every per-source bound shrinks as the SNR grows"
    assert bool(torch.isfinite(bounds[-1]).all())


def test_crb_is_nan_in_absent_slots() -> None:
    system = SystemConfig()
    batch = generate_scenes(system, 6, generator=torch.Generator().manual_seed(22), device="cpu")
    res = crb_compressed(system, batch.H, batch.codes, batch.azimuth, batch.elevation, batch.range_m,
                         batch.power, batch.mask, snr_db=batch.snr_db)
    assert bool(torch.isnan(res.azimuth_deg[~batch.mask]).all())
    assert bool(torch.isfinite(res.range_m[batch.mask]).all())


def test_steering_jacobian_matches_finite_differences() -> None:
    system = SystemConfig()
    az, el, r = (torch.tensor([0.3, -0.5], dtype=torch.float64), torch.tensor([0.1, -0.2], dtype=torch.float64),
                 torch.tensor([0.9, 4.0], dtype=torch.float64))
    _, d_az, d_el, d_r = steering_jacobian(system, az, el, r)
    h = 1e-6
    for d, bump in ((d_az, (h, 0, 0)), (d_el, (0, h, 0)), (d_r, (0, 0, h))):
        plus = steering(system, az + bump[0], el + bump[1], r + bump[2])
        minus = steering(system, az - bump[0], el - bump[1], r - bump[2])
        assert_close(d, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-8, msg="central differences, h = 1e-6")


def test_crb_needs_exactly_one_noise_level() -> None:
    system = SystemConfig()
    batch = generate_scenes(system, 1, generator=torch.Generator().manual_seed(23), device="cpu")
    args = (system, batch.H, batch.codes, batch.azimuth, batch.elevation, batch.range_m, batch.power, batch.mask)
    with pytest.raises(ValueError, match="exactly one"):
        crb_compressed(*args)
    with pytest.raises(ValueError, match="exactly one"):
        crb_compressed(*args, snr_db=batch.snr_db, noise_var=torch.ones(1))
