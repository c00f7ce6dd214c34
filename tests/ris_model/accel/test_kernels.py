"""ris_model.accel.kernels: the fused grouped-power Triton kernel equals the product-then-reduce it replaces.

On a GPU the kernel runs natively; on the CPU it runs in Triton's interpreter (TRITON_INTERPRET=1, which must be
set before triton is imported, hence a subprocess). Skipped where Triton is not installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def _reference(x: torch.Tensor, d: torch.Tensor, group: int, norms: torch.Tensor | None) -> torch.Tensor:
    """The unfused route in float64: the product, |·|² of [re | im] columns, ÷ norms, sum over row groups."""
    prod = x.double() @ d.double()  # [B, rows, 2P]
    power = prod.unflatten(-1, (2, -1)).square().sum(-2)  # [B, rows, P]
    if norms is not None:
        power = power / norms.double().clamp_min(1e-12)
    return power.unflatten(1, (-1, group)).sum(2)


def check_grouped_power(device: str) -> None:
    """Every operand layout the look pass uses, against the float64 reference."""
    from ris_model.accel.kernels import fused_available, grouped_power  # after TRITON_INTERPRET is set
    from ris_model.accel.lowp import LOW_PRECISION, real_block

    gen = torch.Generator().manual_seed(0)
    B, L, M, N = 3, 4, 8, 20
    ops = torch.randn(B, L * M, N, generator=gen, dtype=torch.complex64)
    x = torch.view_as_real(ops).flatten(-2).to(LOW_PRECISION).to(device)  # [B, L·M, 2N]
    shared = real_block(torch.randn(N, 37, generator=gen, dtype=torch.complex64)).to(device)  # [2N, 74]
    batched = real_block(torch.randn(B, N, 27, generator=gen, dtype=torch.complex64)).to(device)  # [B, 2N, 54]
    assert fused_available(x, M)
    for d in (shared, batched):
        P = d.shape[-1] // 2
        norms = (torch.rand(B, L * M, P, generator=gen) + 0.1).to(device)
        for group, nrm in ((M, None), (L * M, None), (L * M // 2, norms), (2, norms)):
            out = grouped_power(x, d, group, nrm)
            assert out.shape == (B, L * M // group, P) and out.dtype == torch.float32
            assert_close(out.double(), _reference(x, d, group, nrm), rtol=1e-5, atol=1e-6,
                         msg=f"group {group}, norms {nrm is not None}, d {tuple(d.shape)}")
    assert not fused_available(x, 12), "group sizes must be powers of two"


def check_refinement_products(device: str) -> None:
    """The refinement's two fused products (candidate norms, normalized score) against their torch route."""
    from ris_model.accel.kernels import grouped_power
    from ris_model.accel.lowp import LOW_PRECISION, LowPrecisionOperator, block_power, real_block

    gen = torch.Generator().manual_seed(1)
    B, L, M, N, P = 2, 4, 4, 16, 27
    ops = torch.randn(B, L, M, N, generator=gen, dtype=torch.complex64).to(device)
    fused = LowPrecisionOperator(ops, real_block=True)
    plain = LowPrecisionOperator(ops, real_block=True)
    plain.fused = False
    assert fused.fused
    block = real_block(torch.randn(B, N, P, generator=gen, dtype=torch.complex64)).to(device)  # [B, 2N, 2P]
    power_fused, power_plain = fused.power_block(block), plain.power_block(block)
    assert power_fused.shape == (B, L, P)
    assert_close(power_fused, power_plain, rtol=3e-3, atol=1e-6)  # the torch route rounds products to fp16
    z = torch.randn(B, L, N, generator=gen, dtype=torch.complex64)
    zr = torch.view_as_real(z).flatten(-2).to(LOW_PRECISION).to(device)
    score_fused = grouped_power(zr, block, L, power_plain)[:, 0]
    score_plain = (block_power(zr @ block) / power_plain.clamp_min(1e-12)).sum(1)
    assert_close(score_fused, score_plain, rtol=3e-3, atol=1e-6)


def _run(check: str) -> None:
    if torch.cuda.is_available():
        globals()[check]("cuda")
        return
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    code = f"from tests.ris_model.accel.test_kernels import {check}; {check}('cpu')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_grouped_power_matches_the_unfused_product() -> None:
    _run("check_grouped_power")


def test_refinement_products_match_their_torch_route() -> None:
    _run("check_refinement_products")


def check_fused_refine(device: str) -> None:
    """The whole refinement in one kernel (ris_model.accel.refine_kernel) picks the torch route's anchors, for both
    steering models, on operators and residuals from real scenes."""
    from api_schemas import ModelConfig, SystemConfig
    from ris_model.accel.lowp import LowPrecisionOperator
    from ris_model.accel.refine_kernel import fused_refine
    from ris_model.model.unrolled import UnrolledOMPBackbone
    from ris_model.scenes import generate_scenes

    for steering_model in ("exact", "fresnel"):
        system = SystemConfig(n_ris_h=6, n_ris_v=4, n_bs_antennas=4, n_snapshots=16, steering_model=steering_model)
        model = ModelConfig(grid_azimuth=8, grid_elevation=4, grid_inv_range=3, look_refine_rounds=3, d_model=16,
                            n_heads=2)
        net = UnrolledOMPBackbone(system, model).to(device)
        batch = generate_scenes(system, 6, generator=torch.Generator(device).manual_seed(3), device=device)
        y, H, codes = batch.y, batch.H, batch.codes
        ops = LowPrecisionOperator(H[:, None] * codes[:, :, None, :], real_block=True)  # unwhitened: any operator
        assert ops.fused_refine, "the default-like shapes (L = 16, powers of two) must take the fused route"
        z = (H.mH @ y.transpose(1, 2)).transpose(1, 2) * codes.conj()  # [B, L, N] back-projection
        gen = torch.Generator().manual_seed(4)
        anchor = net.anchors[torch.randint(0, net.anchors.shape[0], (6,), generator=gen)].to(device)
        fused = net._refine(anchor, z, ops)
        zr = torch.view_as_real(z.conj().resolve_conj()).flatten(-2).to(torch.float16)
        one_tile = fused_refine(anchor, zr, ops.ops, net.element_xyz, net.grid_step / 2, net.anchors.amin(0),
                                net.anchors.amax(0), net.wavenumber, net.fresnel, 3, 16, 4, row_block=64)
        ops.fused_refine = False
        plain = net._refine(anchor, z, ops)
        assert fused.shape == (6, 3) and fused.dtype == torch.float32
        assert not torch.equal(fused, anchor), "the search must move at least one anchor"
        # rows in four tiles (snapshot products as sums) and in one (as a tensor-core product): the same search
        assert_close(one_tile, fused, rtol=1e-5, atol=1e-6)
        # on a GPU the kernel's sine and cosine differ from the compiled route's in the last bits: a rare
        # near-tie may go the other way, so all but one scene must agree there; in the interpreter, all
        same = ((fused - plain).abs() <= 1e-6 + 1e-5 * plain.abs()).all(-1)
        assert same.sum() >= len(same) - (1 if fused.is_cuda else 0), (steering_model, fused, plain)


def test_fused_refinement_picks_the_torch_routes_anchors() -> None:
    _run("check_fused_refine")


def check_look_pass_routes(device: str) -> None:
    """The whole look pass with every fused route (atom norms, images, one-kernel refinement) equals the
    cuBLAS-and-torch route: the same picks and anchors, features to fp16 rounding."""
    from api_schemas import ModelConfig, SystemConfig
    from ris_model.accel.lowp import FusedRoutes
    from ris_model.model import unrolled
    from ris_model.scenes import generate_scenes

    system = SystemConfig(n_ris_h=6, n_ris_v=4, n_bs_antennas=4, n_snapshots=16, snr_min_db=15.0)
    model = ModelConfig(grid_azimuth=8, grid_elevation=4, grid_inv_range=3, d_model=16, n_heads=2)
    net = unrolled.UnrolledOMPBackbone(system, model).to(device)
    batch = generate_scenes(system, 8, generator=torch.Generator(device).manual_seed(5), device=device)
    looks_fused, anchors_fused = net.look(batch.y, batch.H, batch.codes, real_block=True)
    looks_plain, anchors_plain = net.look(batch.y, batch.H, batch.codes, real_block=True, routes=FusedRoutes.none())
    # looks at true sources (the first k of a scene, ≥ 15 dB) must agree; a look past them ranks noise peaks,
    # where the routes' different fp16 rounding (the torch route rounds the product) may break a near-tie
    # (on a GPU also the kernel's sine and cosine, last bits): compare whole scenes whose true looks agree
    real = torch.arange(system.k_max, device=device) < batch.k[:, None]  # [B, K_MAX]
    same = ((anchors_fused - anchors_plain).abs() <= 1e-6 + 1e-5 * anchors_plain.abs()).all(-1)  # [B, K_MAX]
    agree = (same | ~real).all(-1)  # [B]
    assert agree.sum() >= len(agree) - (1 if device != "cpu" else 0), (anchors_fused, anchors_plain)
    assert_close(looks_fused[agree][real[agree]], looks_plain[agree][real[agree]], rtol=5e-3, atol=5e-3)


def test_look_pass_fused_routes_match_the_torch_routes() -> None:
    _run("check_look_pass_routes")
