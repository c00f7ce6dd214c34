"""ris_model.physics: the public data contract of ARCHITECTURE.md (element grid, steering, codebook)."""

from __future__ import annotations

import cmath
import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from api_schemas import SystemConfig
from ris_model.physics import dft_codebook, element_positions, steering, steering_far

C = 299_792_458.0


def _random_directions(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    az = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * math.radians(60)
    el = (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * math.radians(30)
    return az, el


# ---------------------------------------------------------------- element grid


def test_element_positions_grid_is_centred_on_origin() -> None:
    system = SystemConfig(n_ris_h=5, n_ris_v=3, n_snapshots=4)
    e = element_positions(system)
    assert_close(e.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-15,
                 msg="data contract: the grid is centred on the origin")


def test_element_positions_spacing_is_half_wavelength_in_meters() -> None:
    system = SystemConfig(n_ris_h=5, n_ris_v=3, n_snapshots=4, carrier_hz=2.4e9)
    e = element_positions(system).reshape(3, 5, 3)  # [i_v, i_h, xyz]
    spacing = 0.5 * C / 2.4e9  # meters, λ = c/f
    assert_close(e[:, 1:, 0] - e[:, :-1, 0], torch.full((3, 4), spacing, dtype=torch.float64), rtol=1e-12, atol=0,
                 msg="x steps by d_h = λ/2 along i_h")
    assert_close(e[1:, :, 1] - e[:-1, :, 1], torch.full((2, 5), spacing, dtype=torch.float64), rtol=1e-12, atol=0,
                 msg="y steps by d_v = λ/2 along i_v")
    assert torch.all(e[..., 2] == 0), "the RIS lies in the x–y plane"


def test_element_positions_flat_index_is_iv_major() -> None:
    system = SystemConfig(n_ris_h=5, n_ris_v=3, n_snapshots=4)
    e = element_positions(system)
    d = system.spacing_m
    for i_v, i_h in itertools.product(range(3), range(5)):
        n = i_v * 5 + i_h  # the data contract: n = i_v·N_H + i_h
        expected = torch.tensor([(i_h - 2) * d, (i_v - 1) * d, 0.0], dtype=torch.float64)
        assert_close(e[n], expected, rtol=0, atol=1e-15, msg=f"element (i_h={i_h}, i_v={i_v}) at row {n}")


# ---------------------------------------------------------------- steering


def test_steering_has_unit_norm(gen: torch.Generator) -> None:
    system = SystemConfig()
    az, el = _random_directions(gen, 256)
    r = 0.5 + 9.5 * torch.rand(256, generator=gen, dtype=torch.float64)
    a = steering(system, az, el, r)
    assert a.shape == (256, system.n_ris) and a.dtype == torch.complex128
    assert_close(a.abs().square().sum(-1), torch.ones(256, dtype=torch.float64), rtol=0, atol=1e-12,
                 msg="‖a‖ = 1 (each entry has modulus 1/√N)")


def test_steering_on_hand_computed_element_matches_exact_phase() -> None:
    system = SystemConfig()  # 12×12, 1 GHz, λ/2
    lam = C / 1e9
    d = lam / 2
    i_h, i_v = 2, 7  # an asymmetric element, so a transposed grid or flat index fails
    x, y = (i_h - 5.5) * d, (i_v - 5.5) * d
    phi, theta, r = math.radians(30.0), math.radians(10.0), 2.0
    px, py, pz = r * math.cos(theta) * math.sin(phi), r * math.sin(theta), r * math.cos(theta) * math.cos(phi)
    dist = math.sqrt((px - x) ** 2 + (py - y) ** 2 + pz**2)
    expected = cmath.exp(-1j * (2 * math.pi / lam) * (dist - r)) / 12
    a = steering(system, torch.tensor(phi, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64),
                 torch.tensor(r, dtype=torch.float64))
    got = a[i_v * 12 + i_h]
    assert_close(got, torch.tensor(expected, dtype=torch.complex128), rtol=0, atol=1e-12,
                 msg="a_n = exp(−j·k0·(‖p − e_n‖ − r))/√N at n = i_v·N_H + i_h")


def test_steering_at_centre_element_phase_is_zero(gen: torch.Generator) -> None:
    # property: with an odd grid the centre element sits on the origin, so its phase is 0 for any source
    system = SystemConfig(n_ris_h=5, n_ris_v=5)
    az, el = _random_directions(gen, 64)
    a = steering(system, az, el, torch.full_like(az, 1.5))
    assert_close(a[:, 12], torch.full((64,), 0.2 + 0j, dtype=torch.complex128), rtol=0, atol=1e-12,
                 msg="phase is relative to the RIS centre")


def test_steering_at_far_range_equals_plane_wave(gen: torch.Generator) -> None:
    system = SystemConfig()
    az, el = _random_directions(gen, 128)
    a = steering(system, az, el, torch.full_like(az, 1e5))
    e = element_positions(system)
    k0 = 2 * math.pi / system.wavelength_m
    phase = k0 * (e[:, 0] * (torch.sin(az) * torch.cos(el))[:, None] + e[:, 1] * torch.sin(el)[:, None])
    plane = torch.polar(torch.full_like(phase, 1 / 12), phase)  # exp(+j·k0·(x·sinφ·cosθ + y·sinθ))/√N
    # residual Fresnel term k0·‖e‖²/(2r) ≤ 1.4e-4 rad at r = 1e5 m → |Δa| ≤ 1.2e-5
    assert_close(a, plane, rtol=0, atol=2e-5, msg="near-field steering tends to the far-field plane wave")
    assert_close(steering_far(system, az, el), plane, rtol=0, atol=1e-12, msg="steering_far is the plane wave")


@pytest.mark.parametrize("range_m", [5.0, 10.0, 20.0, 36.0])
def test_fresnel_steering_in_fresnel_region_is_close_to_exact(gen: torch.Generator, range_m: float) -> None:
    # 12×12 at 1 GHz: D ≈ 2.33 m (diagonal), Fresnel region 0.62·√(D³/λ) ≈ 4.0 m … 2D²/λ ≈ 36 m
    exact, fresnel = SystemConfig(), SystemConfig(steering_model="fresnel")
    az, el = _random_directions(gen, 256)
    r = torch.full_like(az, range_m)
    a, b = steering(exact, az, el, r), steering(fresnel, az, el, r)
    inner = (a.conj() * b).sum(-1).abs()
    assert inner.min() >= 0.99, f"|a_exactᴴ·a_fresnel| = {inner.min():.4f} at r = {range_m} m"
    phase_err = (a.conj() * b).angle().abs().max()
    assert phase_err < math.pi / 8, f"per-element phase error {phase_err:.3f} rad ≥ π/8 at r = {range_m} m"


def test_fresnel_phase_error_decreases_with_range(gen: torch.Generator) -> None:
    exact, fresnel = SystemConfig(), SystemConfig(steering_model="fresnel")
    az, el = _random_directions(gen, 64)
    errors = []
    for range_m in (2.0, 4.0, 8.0, 16.0, 32.0):
        r = torch.full_like(az, range_m)
        errors.append(float((steering(exact, az, el, r).conj() * steering(fresnel, az, el, r)).angle().abs().max()))
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:], strict=False)), errors


def test_steering_rejects_integer_angles() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        steering(SystemConfig(), torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))


# ---------------------------------------------------------------- codebook


def test_dft_codebook_has_unit_modulus() -> None:
    for system in (SystemConfig(), SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4)):
        codes = dft_codebook(system)
        assert codes.shape == (system.n_snapshots, system.n_ris) and codes.dtype == torch.complex64
        assert_close(codes.abs(), torch.ones(codes.shape), rtol=0, atol=1e-6, msg="RIS codes are phase-only")


def test_dft_codebook_default_rows_are_pq_in_0369_p_major() -> None:
    system = SystemConfig()
    codes = dft_codebook(system)
    i_v, i_h = torch.meshgrid(torch.arange(12.0, dtype=torch.float64), torch.arange(12.0, dtype=torch.float64),
                              indexing="ij")
    i_h, i_v = i_h.reshape(-1), i_v.reshape(-1)
    for row, (p, q) in enumerate(itertools.product((0, 3, 6, 9), repeat=2)):  # p-major
        expected = torch.polar(torch.ones(144, dtype=torch.float64), 2 * math.pi * (p * i_h / 12 + q * i_v / 12))
        assert_close(codes[row], expected.to(torch.complex64), rtol=0, atol=1e-5,
                     msg=f"row {row} is the 2D DFT beam (p, q) = ({p}, {q}) (complex64 round-off)")


def test_dft_codebook_three_bit_quantization_gives_eight_phase_levels() -> None:
    # 10×10: beams p, q ∈ {0, 2, 5, 8} give phases on multiples of 2π/10, so rounding to 2π/8 is visible
    # (the default 12×12 beams {0, 3, 6, 9} already lie on multiples of π/2)
    system = SystemConfig(n_ris_h=10, n_ris_v=10, code_phase_bits=3)
    phase = dft_codebook(system).angle().double()
    levels = torch.round(phase / (math.pi / 4))
    assert_close(phase, levels * math.pi / 4, rtol=0, atol=1e-6, msg="every phase is a multiple of 2π/8")
    assert set((levels.long() % 8).unique().tolist()) == set(range(8)), "all 8 levels occur"


def test_dft_codebook_without_quantization_has_more_than_eight_levels() -> None:
    # property: the switch matters (10-point DFT phases are multiples of 2π/10, not of 2π/8)
    phase = dft_codebook(SystemConfig(n_ris_h=10, n_ris_v=10)).angle().double() % (2 * math.pi)
    assert len(torch.unique(torch.round(phase * 1e4) % 62832)) > 8


def test_steering_is_exact_under_bf16_autocast(gen: torch.Generator) -> None:
    """Training runs the model under bf16 autocast on CUDA; a matmul inside steering would run in bf16 there
    (~0.05 rad of phase error per element). CPU autocast casts matmuls the same way, so this pins it here."""
    s = SystemConfig()
    az = (torch.rand(500, generator=gen) - 0.5) * 2.0
    el = (torch.rand(500, generator=gen) - 0.5) * 1.0
    r = 0.5 + 9.5 * torch.rand(500, generator=gen)
    exact = steering(s, az, el, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = steering(s, az, el, r)
        far = steering_far(s, az, el)
    assert under_amp.dtype == torch.complex64
    assert_close(under_amp, exact, atol=1e-6, rtol=0)
    assert_close(far, steering_far(s, az, el), atol=1e-6, rtol=0)
