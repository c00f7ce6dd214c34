"""ris_model.model.network: output shapes, scale invariance and the Gram route to R̂'s spectrum
(SCIENCE.md, "The network", "Numerically stable spectral features")."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ris_model.model.network import RisNet
from ris_model.scenes import SceneBatch, generate_scenes, make_generator
from tests.ris_model.conftest import make_model, tiny_config

ARCHITECTURES = ["unrolled_omp", "seed_cov"]


def _batch(config, n: int = 6, seed: int = 3) -> SceneBatch:
    return generate_scenes(config.system, n, generator=make_generator(seed, torch.device("cpu")), device="cpu")


def _eval_model(architecture: str) -> tuple[RisNet, object]:
    config = tiny_config(architecture=architecture)
    return make_model(config).eval(), config


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_output_shapes(architecture: str) -> None:
    model, config = _eval_model(architecture)
    b = _batch(config)
    out = model(b.y, b.H, b.codes, b.snr_db)
    B, N, K = 6, config.system.n_ris, config.system.k_max
    assert out.cov_factor.shape == (B, N, K) and out.cov_factor.is_complex()
    for name in ("k_logits", "k_logits_spectral", "k_logits_direct", "azimuth", "elevation", "range_m",
                 "exist_logits", "gram_eigs"):
        assert getattr(out, name).shape == (B, K), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_outputs_respect_field_of_view_and_trace_one(architecture: str) -> None:
    model, config = _eval_model(architecture)
    s = config.system
    b = _batch(config)
    with torch.no_grad():
        out = model(b.y, b.H, b.codes)
    assert out.azimuth.abs().max() <= torch.deg2rad(torch.tensor(s.azimuth_max_deg))
    assert out.elevation.abs().max() <= torch.deg2rad(torch.tensor(s.elevation_max_deg))
    assert s.range_min_m <= out.range_m.min() and out.range_m.max() <= s.range_max_m
    assert_close(out.cov_factor.abs().square().sum((1, 2)), torch.ones(6), rtol=0, atol=1e-5,
                 msg="R̂ = F·Fᴴ is trace-normalized (float32)")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_is_invariant_to_input_scale(architecture: str) -> None:
    model, config = _eval_model(architecture)
    b = _batch(config)
    with torch.no_grad():
        ref = model(b.y, b.H, b.codes)
        scaled = model(b.y * 1000, b.H * 7, b.codes)
    # each scene is normalized to unit RMS; what remains is float32 round-off through the network
    for name in ("cov_factor", "k_logits", "azimuth", "elevation", "range_m", "exist_logits", "gram_eigs"):
        assert_close(getattr(scaled, name), getattr(ref, name), rtol=1e-4, atol=1e-5,
                     msg=f"{name}: models must not depend on the absolute scale of y or H (the data contract)")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gram_eigs_equal_nonzero_eigenvalues_of_dense_covariance(architecture: str) -> None:
    model, config = _eval_model(architecture)
    b = _batch(config)
    with torch.no_grad():
        out = model(b.y, b.H, b.codes)
    F = out.cov_factor.to(torch.complex128)
    dense = torch.linalg.eigvalsh(F @ F.mH).flip(-1)[:, : config.system.k_max]  # test only: the N×N route
    assert_close(out.gram_eigs.double(), dense, rtol=1e-5, atol=1e-7,
                 msg="K_MAX×K_MAX Gram eigenvalues = non-zero eigenvalues of F·Fᴴ (complex64 factor)")


def test_forward_does_not_use_snr() -> None:
    model, config = _eval_model("seed_cov")
    b = _batch(config)
    with torch.no_grad():
        a, c = model(b.y, b.H, b.codes, b.snr_db), model(b.y, b.H, b.codes, b.snr_db + 30)
    assert torch.equal(a.k_logits, c.k_logits), "the model infers the noise level itself"


def test_param_groups_cover_every_parameter_once() -> None:
    model = make_model(tiny_config())
    grouped = [id(p) for ps in model.param_groups().values() for p in ps]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_and_loss_run_under_bf16_autocast(architecture: str) -> None:
    """The GPU path trains under bf16 autocast; complex ops have no bf16, so the heads must cast (regression)."""
    from api_schemas import LossWeights
    from ris_model.losses import compute_loss

    model, config = _eval_model(architecture)
    batch = _batch(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch.y, batch.H, batch.codes)
        loss = compute_loss(out, batch, LossWeights(lam_gap=0.1, lam_margin=0.1), config.system).total
    loss.backward()
    assert torch.isfinite(loss)
    assert out.azimuth.dtype == torch.float32 and out.cov_factor.dtype == torch.complex64
