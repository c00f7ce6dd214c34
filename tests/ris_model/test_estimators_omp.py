"""ris_model.estimators SOMP: recovery on noise-free compressed measurements, the stopping rule, errors."""

from __future__ import annotations

import math

import pytest
import torch

from api_schemas import SystemConfig
from ris_model.estimators import SearchGrid, match_sources, somp
from ris_model.physics import steering
from ris_model.scenes import generate_scenes

SYSTEM = SystemConfig()
# well-separated sources (φ deg, θ deg, r m, power), off the 24×12×6 grid
SOURCES = [(-40.0, 12.0, 1.2, 1.0), (25.0, -18.0, 2.5, 0.8), (-5.0, 5.0, 0.8, 0.6)]


def noise_free_scenes(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """y [B, L, M] = H·diag(c_l)·A·s_l without noise (ARCHITECTURE.md, "The data contract"), with the channels and codes
    of seeded scenes; and the truth float64 [B, 3, 3] (φ rad, θ rad, r m) with mask [B, 3]."""
    B = len(counts)
    batch = generate_scenes(SYSTEM, B, generator=torch.Generator().manual_seed(31), device="cpu")
    src = torch.tensor(SOURCES, dtype=torch.float64)
    mask = torch.arange(3)[None] < torch.tensor(counts)[:, None]
    A = steering(SYSTEM, torch.deg2rad(src[:, 0]), torch.deg2rad(src[:, 1]), src[:, 2]).to(torch.complex64)  # [3, N]
    s = torch.randn(B, SYSTEM.n_snapshots, 3, generator=torch.Generator().manual_seed(32), dtype=torch.complex64)
    s = s * (src[:, 3].sqrt() * mask).to(torch.complex64)[:, None]  # [B, L, 3]
    x = (s @ A) * batch.codes  # [B, L, N]: diag(c_l)·A·s_l
    y = x @ batch.H.transpose(1, 2)  # [B, L, M]
    truth = torch.stack([torch.deg2rad(src[:, 0]), torch.deg2rad(src[:, 1]), src[:, 2]], -1).expand(B, 3, 3)
    return y, batch.H, batch.codes, (truth, mask)  # type: ignore[return-value]


def test_somp_recovers_well_separated_sources_noise_free() -> None:
    counts = [1, 2, 3]
    y, H, codes, (truth, mask) = noise_free_scenes(counts)
    grid = SearchGrid.uniform(SYSTEM)  # 24 × 12 × 6
    # noise-free data: a nominal 30 dB sets the noise floor of the stopping rule; 3 cyclic passes take the
    # mutual bias of the sources (and so the residual leakage) below that floor, and pruning drops ghost picks
    res = somp(y, H, codes, grid, snr_db=torch.full((3,), 30.0), refine_iters=8, n_cyclic=3)
    assert res.estimate.k.tolist() == counts
    m = match_sources(res.estimate, truth[..., 0], truth[..., 1], truth[..., 2], mask)
    assert bool(m.matched[mask].all())
    step_az, step_el, step_inv_r = grid.steps()
    d_inv_r = 1 / (truth[..., 2] + m.d_range_m) - 1 / truth[..., 2]
    assert float(m.d_azimuth[mask].abs().max()) < step_az
    assert float(m.d_elevation[mask].abs().max()) < step_el
    assert float(d_inv_r[mask].abs().max()) < step_inv_r
    # refinement takes the estimates well below the grid step
    assert float(m.d_azimuth[mask].abs().max()) < math.radians(0.5)


def test_somp_residual_energy_is_non_increasing() -> None:
    batch = generate_scenes(SYSTEM, 4, generator=torch.Generator().manual_seed(33), device="cpu")
    res = somp(batch.y, batch.H, batch.codes, SearchGrid.uniform(SYSTEM, 12, 6, 4), snr_db=None, refine_iters=2)
    assert bool((res.residual_energy.diff(dim=1) <= 1e-6 * res.residual_energy[:, :1]).all())
    assert res.estimate.k.shape == (4,) and bool((res.estimate.k >= 1).all())
    assert bool((res.estimate.valid.sum(1) == res.estimate.k).all())


def test_somp_too_many_sources_raises() -> None:
    batch = generate_scenes(SYSTEM, 1, generator=torch.Generator().manual_seed(34), device="cpu")
    with pytest.raises(ValueError, match="max_sources"):
        somp(batch.y, batch.H, batch.codes, SearchGrid.uniform(SYSTEM, 4, 4, 2), max_sources=16)


def test_somp_mismatched_shapes_raise() -> None:
    batch = generate_scenes(SYSTEM, 2, generator=torch.Generator().manual_seed(35), device="cpu")
    with pytest.raises(ValueError, match="codes"):
        somp(batch.y, batch.H, batch.codes[:, :, :100], SearchGrid.uniform(SYSTEM, 4, 4, 2))
