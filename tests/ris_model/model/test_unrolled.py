"""ris_model.model.unrolled and ris_model.accel.cuda_graphs: the look pass's low-precision refinement operator, its
refinement, and the CUDA-graph replay of the look pass."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.testing import assert_close

from api_schemas import ModelConfig, SystemConfig
from ris_model.accel.cuda_graphs import CudaGraphed
from ris_model.accel.lowp import (
    LOW_PRECISION,
    LowPrecisionOperator,
    block_from_planes,
    candidate_block,
    normalized_image,
    phasor_planes,
    real_block,
)
from ris_model.model.network import _unit_rms
from ris_model.model.unrolled import UnrolledOMPBackbone
from ris_model.physics import element_positions, steering
from ris_model.scenes import generate_scenes, make_generator
from tests.ris_model.conftest import make_model, tiny_config


def test_refinement_norms_real_fp16_block_match_complex_norms() -> None:
    """The CUDA route (real fp16 block, fp32 accumulation) computes the same ‖H_w·diag(c_l)·a‖² as complex64."""
    g = torch.Generator().manual_seed(0)
    ops = torch.randn(3, 16, 16, 144, dtype=torch.complex64, generator=g) / 12
    a = torch.randn(3, 27, 144, dtype=torch.complex64, generator=g) / 12
    exact = (ops @ a.transpose(1, 2)[:, None]).abs().square().sum(2)  # [B, L, P]: Σ_m |Σ_n ops·a|²
    complex_route = LowPrecisionOperator(ops).power(a)
    block_route = LowPrecisionOperator(ops, real_block=True).power(a)
    assert complex_route.shape == block_route.shape == (3, 16, 27)
    assert_close(complex_route, exact, rtol=1e-5, atol=0)
    assert_close(block_route, exact, rtol=3e-3, atol=0)


def test_operator_rows_from_factors_equal_the_product_then_rounding() -> None:
    """LowPrecisionOperator.from_factors (one kernel on CUDA) builds the same fp16 rows as the complex product."""
    g = torch.Generator().manual_seed(2)
    Hw = torch.randn(3, 16, 144, dtype=torch.complex64, generator=g)
    codes = torch.polar(torch.ones(3, 16, 144), torch.rand(3, 16, 144, generator=g) * 6.3)
    product = LowPrecisionOperator(Hw[:, None] * codes[:, :, None, :], real_block=True)
    factored = LowPrecisionOperator.from_factors(Hw, codes, real_block=True)
    assert factored.shape == product.shape == (3, 16, 16) and factored.ops.shape == (3, 256, 288)
    assert_close(factored.ops, product.ops, rtol=1e-3, atol=1e-3)  # at most one fp16 rounding step apart
    complex_route = LowPrecisionOperator.from_factors(Hw, codes, real_block=False)
    assert not complex_route.real_block and torch.equal(complex_route.ops,
                                                        (Hw[:, None] * codes[:, :, None, :]).reshape(3, 256, 144))


def test_grid_atom_norms_real_fp16_block_match_complex_norms() -> None:
    config = tiny_config(system=SystemConfig(), model=ModelConfig())
    backbone = UnrolledOMPBackbone(config.system, config.model)
    g = torch.Generator().manual_seed(1)
    ops = torch.randn(2, 16, 16, 144, dtype=torch.complex64, generator=g) / 12
    exact = (ops @ backbone.dictionary_h).abs().square().sum(2)  # [B, L, G]
    assert_close(backbone._atom_norms(LowPrecisionOperator(ops)), exact, rtol=1e-4, atol=0)
    assert_close(backbone._atom_norms(LowPrecisionOperator(ops, real_block=True)), exact, rtol=5e-3, atol=1e-6)


def test_refined_look_lands_closer_to_a_single_noise_free_source_than_its_grid_cell() -> None:
    config = tiny_config(system=SystemConfig(), model=ModelConfig())  # the default 12×12 RIS and search grid
    backbone = UnrolledOMPBackbone(config.system, config.model.model_copy(update={"look_refine_rounds": 4}))
    grid_only = UnrolledOMPBackbone(config.system, config.model.model_copy(update={"look_refine_rounds": 0}))
    batch = generate_scenes(config.system, 8, generator=make_generator(5, torch.device("cpu")), device="cpu")
    # one source between grid points, no noise: y_l = H·diag(c_l)·a(p)
    truth = torch.tensor([math.radians(13.3), math.radians(-7.7), 1 / 3.1]).expand(8, 3)
    a = steering(config.system, truth[:, 0], truth[:, 1], 1 / truth[:, 2]).to(torch.complex64)  # [B, N]
    y = ((batch.H[:, None] * batch.codes[:, :, None, :]) @ a[:, None, :, None]).squeeze(-1)  # [B, L, M]
    y, H = _unit_rms(y), _unit_rms(batch.H)
    with torch.no_grad():
        _, refined = backbone.look(y, H, batch.codes)
        _, on_grid = grid_only.look(y, H, batch.codes)
    err_refined = (refined[:, 0, :2] - truth[:, :2]).abs()
    err_grid = (on_grid[:, 0, :2] - truth[:, :2]).abs()
    assert (err_refined.sum(-1) < err_grid.sum(-1)).all()
    assert err_refined.max() < backbone.grid_step[:2].max() / 4


def _random_candidates(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(n, 27, generator=g) - 0.5, torch.rand(n, 27, generator=g) - 0.5,
                        1 / (1 + 9 * torch.rand(n, 27, generator=g))], -1)  # (φ, θ, 1/r)


@pytest.mark.parametrize("steering_model", ["exact", "fresnel"])
def test_candidate_block_is_the_real_block_of_the_steering_vectors(steering_model: str) -> None:
    system = SystemConfig(steering_model=steering_model)
    cand = _random_candidates(4, 0)
    k0 = 2 * math.pi / system.wavelength_m
    block = candidate_block(cand, element_positions(system, dtype=torch.float32), k0, steering_model == "fresnel")
    a = steering(system, cand[..., 0], cand[..., 1], 1 / cand[..., 2]).to(torch.complex64)  # [B, 27, N]
    assert block.shape == (4, 2 * system.n_ris, 54) and block.dtype == torch.float16
    assert_close(block.float(), real_block(a.transpose(1, 2)).float(), rtol=0, atol=1e-4)


def test_candidate_block_kernels_trace_as_one_graph_each_for_torch_compile() -> None:
    """On CUDA they run through torch.compile(fullgraph=True): a graph break would be an error there."""
    system = SystemConfig()
    planes = torch.compile(phasor_planes.__wrapped__, fullgraph=True, backend="aot_eager")
    block = torch.compile(block_from_planes.__wrapped__, fullgraph=True, backend="aot_eager")
    e = element_positions(system, dtype=torch.float32)
    k0 = 2 * math.pi / system.wavelength_m
    for n in (3, 5):  # a second batch size recompiles once with a dynamic batch
        x, y, r = (torch.rand(n, 27, generator=torch.Generator().manual_seed(n + i)) + 0.5 for i in range(3))
        c, s = planes(x, y, r, e, k0, False)
        assert c.shape == s.shape == (n, system.n_ris, 27)
        out = block(c, s)
        assert out.shape == (n, 2 * system.n_ris, 54) and out.dtype == LOW_PRECISION
        assert torch.equal(out, block_from_planes(*phasor_planes(x, y, r, e, k0, False)))
        assert torch.equal(out, real_block(torch.complex(c, s)))


@pytest.mark.parametrize("with_norms", [True, False])
def test_normalized_image_traces_as_one_graph_and_matches_the_complex_image(with_norms: bool) -> None:
    config = tiny_config(system=SystemConfig(), model=ModelConfig())
    backbone = UnrolledOMPBackbone(config.system, config.model)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 16, 144, dtype=torch.complex64, generator=g) / 12
    norms = torch.rand(3, 16, backbone.dictionary.shape[0], generator=g) + 0.5 if with_norms else None
    taken = torch.zeros(3, backbone.dictionary.shape[0], dtype=torch.bool)
    taken[:, 7] = True
    exact = backbone._image(z, norms, taken, real_block=False)
    fn = torch.compile(normalized_image.__wrapped__, fullgraph=True, backend="aot_eager")
    out = torch.view_as_real(z).flatten(-2).to(LOW_PRECISION) @ backbone.dictionary_h_lowp
    assert_close(fn(out, norms, taken), exact, rtol=5e-3, atol=1e-6)
    assert_close(backbone._image(z, norms, taken, real_block=True), exact, rtol=5e-3, atol=1e-6)
    assert bool((exact[:, 7] == 0).all())


def test_real_block_look_pass_agrees_with_the_complex_look_pass() -> None:
    """The CUDA route (fp16 real blocks for grid, atom norms and refinement) picks the same cells and lands
    within the last refinement step of the complex64 route, on the default system with noise."""
    config = tiny_config(system=SystemConfig(snr_min_db=15.0, snr_max_db=20.0), model=ModelConfig())
    backbone = UnrolledOMPBackbone(config.system, config.model)
    batch = generate_scenes(config.system, 16, generator=make_generator(7, torch.device("cpu")), device="cpu")
    y, H = _unit_rms(batch.y), _unit_rms(batch.H)
    with torch.no_grad():
        f_complex, anchors_complex = backbone.look(y, H, batch.codes, real_block=False)
        f_block, anchors_block = backbone.look(y, H, batch.codes, real_block=True)
    first = (anchors_block[:, 0] - anchors_complex[:, 0]).abs() / backbone.grid_step  # in grid cells
    assert float(first.max()) <= 1 / 2**backbone.refine_rounds + 1e-6, "first look: the same cell and refinement"
    same = ((anchors_block - anchors_complex).abs() / backbone.grid_step).amax(-1) <= 0.5  # [B, K]
    assert float(same.float().mean()) >= 0.9, "later looks may differ only where two cells nearly tie"


def test_deepcopy_of_a_model_starts_with_no_cuda_graphs() -> None:
    """The diagnostic probe deep-copies the model; graphs belong to the original's tensors."""
    model = make_model(tiny_config())
    probe = copy.deepcopy(model)
    assert isinstance(probe.backbone.graphed_looks, CudaGraphed)
    assert probe.backbone.graphed_looks is not model.backbone.graphed_looks
    assert not probe.backbone.graphed_looks.graphs


def test_cuda_graphs_off_in_config_means_no_graph_wrapper() -> None:
    config = tiny_config()
    backbone = UnrolledOMPBackbone(config.system, config.model.model_copy(update={"cuda_graphs": False}))
    assert backbone.graphed_looks is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_graphed_look_pass_replays_the_eager_look_pass_exactly() -> None:
    config = tiny_config()
    model = make_model(config).cuda().train()
    backbone = model.backbone
    for seed in (1, 2, 3):  # capture on the first, replay on the next ones
        b = generate_scenes(config.system, 32, generator=make_generator(seed, torch.device("cuda")), device="cuda")
        y, H = _unit_rms(b.y), _unit_rms(b.H)
        with torch.no_grad():
            graphed = backbone.graphed_looks(backbone.look, y, H, b.codes)
            eager = backbone.look(y, H, b.codes)
        for g_out, e_out in zip(graphed, eager, strict=True):
            assert_close(g_out, e_out)
    assert backbone.graphed_looks.captures == 1 and backbone.graphed_looks.disabled_reason is None
