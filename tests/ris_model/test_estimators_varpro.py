"""ris_model.estimators.varpro: analytic steering Jacobians, batched small solves and Levenberg–Marquardt on the
variable-projection likelihood."""

from __future__ import annotations

import math

import pytest
import torch

from api_schemas import SystemConfig
from ris_model.estimators.grid import SearchGrid
from ris_model.estimators.varpro import Fits, Scenes, atom_jacobians, small_solve
from ris_model.physics import steering
from ris_model.scenes import generate_scenes, make_generator

POINTS = torch.tensor([[0.3, -0.2, 1 / 2.0], [-0.9, 0.4, 1 / 0.6], [0.1, 0.05, 1 / 9.0], [1.0, -0.5, 1.5]],
                      dtype=torch.float64)  # (φ, θ, 1/r)


@pytest.mark.parametrize("model", ["exact", "fresnel"])
def test_atom_jacobians_match_finite_differences_of_the_steering(model: str) -> None:
    system = SystemConfig(steering_model=model)
    a, da = atom_jacobians(SearchGrid.uniform(system, 2, 2, 1), POINTS)
    torch.testing.assert_close(a, steering(system, POINTS[:, 0], POINTS[:, 1], 1 / POINTS[:, 2]).to(torch.complex64))
    for i in range(3):
        h = torch.zeros(3, dtype=torch.float64)
        h[i] = 1e-6
        plus, minus = POINTS + h, POINTS - h
        fd = (steering(system, plus[:, 0], plus[:, 1], 1 / plus[:, 2])
              - steering(system, minus[:, 0], minus[:, 1], 1 / minus[:, 2])) / 2e-6
        err = (da[:, i].to(torch.complex128) - fd).abs().max() / fd.abs().max()
        assert float(err) < 1e-5, (model, i, float(err))


def test_small_solve_matches_a_dense_solve() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 3, 5, 5, dtype=torch.complex128, generator=g)
    A = A @ A.mH + torch.eye(5)
    rhs = torch.randn(7, 3, 5, 4, dtype=torch.complex128, generator=g)
    torch.testing.assert_close(small_solve(A, rhs), torch.linalg.solve(A, rhs))
    torch.testing.assert_close(small_solve(A, rhs[..., 0]), torch.linalg.solve(A, rhs[..., 0]))


def _noiseless(system: SystemConfig, n: int) -> tuple[Scenes, torch.Tensor, torch.Tensor]:
    """Scenes whose y is the exact model of their true sources (no noise), the truth as (φ, θ, 1/r) [n, K, 3] and
    its mask."""
    b = generate_scenes(system, n, generator=make_generator(4, torch.device("cpu")), device="cpu")
    g = torch.Generator().manual_seed(3)
    s = torch.randn(n, system.n_snapshots, system.k_max, dtype=torch.complex64, generator=g) * b.mask[:, None]
    A = steering(system, b.azimuth, b.elevation, torch.where(b.mask, b.range_m, torch.ones_like(b.range_m)))
    y = torch.einsum("bmn,ln,bkn,blk->blm", b.H, b.codes[0], A * b.mask[..., None], s)
    truth = torch.stack([b.azimuth, b.elevation, 1 / b.range_m.clamp_min(system.range_min_m)], -1).double()
    return Scenes(y, b.H, b.codes, SearchGrid.uniform(system)), truth, b.mask


def test_lm_recovers_noiseless_sources_to_tight_tolerance() -> None:
    system = SystemConfig()
    scenes, truth, mask = _noiseless(system, 24)
    g = torch.Generator().manual_seed(5)
    offset = (2 * torch.rand(truth.shape, generator=g, dtype=torch.float64) - 1) * torch.tensor(
        [math.radians(1.0), math.radians(1.0), 0.03], dtype=torch.float64)
    fits = Fits(scenes.clamp(truth + offset)[:, None], mask[:, None]).lm(scenes, 15)
    err = (fits.p[:, 0] - truth).abs()[mask]  # [n_sources, 3]
    assert float(err[:, :2].max()) < math.radians(1e-3), err[:, :2].max()
    assert float((err[:, 2] * truth[..., 2][mask].reciprocal().square()).max()) < 1e-3, "range within 1 mm"
    total = scenes.y.abs().square().sum((1, 2))
    assert fits.energy is not None and float(fits.energy.max()) < 1e-6 * float(total.min())


def test_gradient_and_energy_are_consistent_with_finite_differences() -> None:
    """The LM's gradient is −½ ∂E/∂p, E the residual energy of the per-snapshot LS fit."""
    system = SystemConfig(snr_min_db=10.0, snr_max_db=10.0)
    b = generate_scenes(system, 4, generator=make_generator(6, torch.device("cpu")), device="cpu")
    scenes = Scenes(b.y, b.H, b.codes, SearchGrid.uniform(system))
    p = torch.stack([b.azimuth, b.elevation, 1 / b.range_m.clamp_min(0.5)], -1).double()[:, None] + 0.01
    fits = Fits(p, b.mask[:, None]).evaluate(scenes)
    assert fits.gradient is not None and fits.energy is not None
    for i in range(3):
        h = torch.zeros(3, dtype=torch.float64)
        h[i] = 1e-4
        slot = torch.zeros(b.mask.shape[1], 1, dtype=torch.float64)
        slot[0] = 1  # move the first source only
        e_plus = Fits(p + slot * h, b.mask[:, None]).evaluate(scenes).energy
        e_minus = Fits(p - slot * h, b.mask[:, None]).evaluate(scenes).energy
        assert e_plus is not None and e_minus is not None
        fd = (e_plus - e_minus)[:, 0] / 2e-4
        torch.testing.assert_close(-2 * fits.gradient[:, 0, i], fd, rtol=0.03, atol=1e-3 * float(fd.abs().max()))


def test_lm_never_raises_the_energy_and_keeps_invalid_slots() -> None:
    system = SystemConfig(snr_min_db=0.0, snr_max_db=10.0)
    b = generate_scenes(system, 16, generator=make_generator(7, torch.device("cpu")), device="cpu")
    scenes = Scenes(b.y, b.H, b.codes, SearchGrid.uniform(system))
    g = torch.Generator().manual_seed(8)
    p = scenes.clamp(torch.stack([b.azimuth, b.elevation, 1 / b.range_m.clamp_min(0.5)], -1).double()
                     + 0.1 * torch.randn(b.mask.shape + (3,), generator=g, dtype=torch.float64))[:, None]
    start = Fits(p, b.mask[:, None]).evaluate(scenes)
    assert start.energy is not None
    before = start.energy.clone()
    out = start.lm(scenes, 5)
    assert out.energy is not None and bool((out.energy <= before).all())
    assert torch.equal(out.p[:, 0][~b.mask], p[:, 0][~b.mask])
