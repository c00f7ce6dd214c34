"""ris_model.losses: term definitions, permutation invariance, weights, NaN injection, and finite gradients on a
rank-deficient R̂ (SCIENCE.md, "Numerically stable spectral features", "Losses and phases")."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch.testing import assert_close

from api_schemas import DebugConfig, LossWeights, ModelConfig, SystemConfig
from ris_model.losses import TERMS, compute_loss, covariance_nmse, geometry_set_loss, match_slots
from ris_model.model.network import ModelOutput, RisNet
from ris_model.scenes import SceneBatch, generate_scenes, make_generator
from ris_model.train.fault_hooks import DebugHooks
from tests.ris_model.conftest import ALL_TERMS, tiny_config
from tests.ris_model.fault_plants import eigenvector_alignment_loss

CPU = torch.device("cpu")


def _batch(system: SystemConfig, n: int = 8, seed: int = 11) -> SceneBatch:
    return generate_scenes(system, n, generator=make_generator(seed, CPU), device=CPU)


@pytest.fixture
def tiny_out() -> tuple[ModelOutput, SceneBatch, SystemConfig]:
    config = tiny_config()
    torch.manual_seed(0)
    model = RisNet(config.system, config.model)
    batch = _batch(config.system)
    return model(batch.y, batch.H, batch.codes), batch, config.system


def _permute_slots(out: ModelOutput, perm: torch.Tensor) -> ModelOutput:
    return dataclasses.replace(
        out, cov_factor=out.cov_factor[:, :, perm], azimuth=out.azimuth[:, perm], elevation=out.elevation[:, perm],
        range_m=out.range_m[:, perm], exist_logits=out.exist_logits[:, perm])


# ---------------------------------------------------------------- covariance NMSE


def test_covariance_nmse_equals_dense_frobenius_ratio(gen: torch.Generator) -> None:
    system = SystemConfig(n_ris_h=6, n_ris_v=6)
    F = _batch(system).covariance_factor()
    F_hat = torch.randn(F.shape, generator=gen, dtype=torch.complex64)
    F_hat = F_hat / F_hat.abs().square().sum((1, 2), keepdim=True).sqrt()
    R_hat, R = (X.to(torch.complex128) @ X.to(torch.complex128).mH for X in (F_hat, F))  # test only: N×N
    dense = ((R_hat - R).abs().square().sum((1, 2)) / R.abs().square().sum((1, 2))).mean()
    assert_close(covariance_nmse(F_hat, F).double(), dense, rtol=1e-4, atol=1e-6,
                 msg="‖R̂−R‖²/‖R‖² through K×K Gram products (complex64)")


def test_covariance_nmse_of_exact_factor_is_zero() -> None:
    F = _batch(SystemConfig(n_ris_h=6, n_ris_v=6)).covariance_factor()
    perm = torch.tensor([2, 0, 1, 4, 3])
    # property: R depends on F only through F·Fᴴ, so permuted columns give the same R
    assert_close(covariance_nmse(F[:, :, perm], F), torch.tensor(0.0), rtol=0, atol=1e-5,
                 msg="NMSE(F, F) = 0 up to float32 cancellation")


# ---------------------------------------------------------------- set loss and matching


def test_set_loss_is_invariant_to_predicted_slot_permutation(tiny_out) -> None:
    out, batch, system = tiny_out
    weights = LossWeights(lam_cov=1.0, lam_k=1.0, lam_aux=1.0, lam_gap=0.5, lam_margin=0.5)
    ref = compute_loss(out, batch, weights, system)
    for perm in itertools.permutations(range(system.k_max)):
        res = compute_loss(_permute_slots(out, torch.tensor(perm)), batch, weights, system)
        assert_close(res.terms["aux"], ref.terms["aux"], rtol=1e-6, atol=1e-7, msg=f"set loss, perm {perm}")
        assert_close(res.total, ref.total, rtol=1e-6, atol=1e-7, msg=f"total loss, perm {perm} (float32)")


def test_set_loss_of_exact_prediction_is_only_existence_term(tiny_out) -> None:
    out, batch, system = tiny_out
    exact = dataclasses.replace(out, azimuth=batch.azimuth, elevation=batch.elevation, range_m=batch.range_m,
                                exist_logits=torch.where(batch.mask, 50.0, -50.0))
    _, loss = geometry_set_loss(exact, batch, system)
    assert_close(loss, torch.tensor(0.0), rtol=0, atol=1e-6, msg="perfect geometry and existence → 0")


def _brute_force_totals(cost: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    K = cost.shape[1]
    totals = [sum(cost[:, p[j], j] * mask[:, j] for j in range(K)) for p in itertools.permutations(range(K))]
    return torch.stack(totals, 1).min(1).values


def _total(cost: torch.Tensor, assignment: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (cost.gather(1, assignment[:, None, :]).squeeze(1) * mask).sum(-1)


def test_match_slots_permutation_path_equals_scipy_hungarian(gen: torch.Generator) -> None:
    cost = torch.rand(64, 5, 5, generator=gen, dtype=torch.float64)
    mask = torch.ones(64, 5)
    got = match_slots(cost, mask)
    for b in range(64):
        rows, cols = linear_sum_assignment(cost[b].numpy())
        expected = torch.empty(5, dtype=torch.long)
        expected[cols] = torch.from_numpy(rows)
        assert torch.equal(got[b], expected), f"scene {b}: unique optimum (continuous random costs)"


def _hungarian_total(cost: torch.Tensor) -> float:
    rows, cols = linear_sum_assignment(cost.numpy())
    return float(cost[rows, cols].sum())


def test_match_slots_with_partial_mask_reaches_hungarian_total(gen: torch.Generator) -> None:
    cost = torch.rand(64, 5, 5, generator=gen, dtype=torch.float64)
    k = torch.randint(1, 6, (64,), generator=gen)
    mask = (torch.arange(5)[None, :] < k[:, None]).double()
    got = _total(cost, match_slots(cost, mask), mask)
    expected = torch.tensor([_hungarian_total(cost[b, :, : int(k[b])]) for b in range(64)], dtype=torch.float64)
    assert_close(got, expected, rtol=1e-12, atol=1e-12, msg="min over matchings of the k true sources")


def test_match_slots_hungarian_path_equals_brute_force(gen: torch.Generator) -> None:
    K = 7  # above _MAX_PERMUTATION_SLOTS: the scipy path
    cost = torch.rand(4, K, K, generator=gen, dtype=torch.float64)
    mask = (torch.arange(K)[None, :] < torch.tensor([[7], [5], [3], [1]])).double()
    assignment = match_slots(cost, mask)
    assert torch.equal(assignment.sort(1).values[0], torch.arange(K)), "a permutation of the slots"
    assert_close(_total(cost, assignment, mask), _brute_force_totals(cost, mask), rtol=1e-12, atol=1e-12,
                 msg="the optimal total cost")


# ---------------------------------------------------------------- weights and NaN injection


def test_total_is_weighted_sum_of_terms(tiny_out) -> None:
    out, batch, system = tiny_out
    w = LossWeights(lam_cov=0.3, lam_k=1.5, lam_aux=0.5, lam_gap=0.2, lam_margin=0.7)
    res = compute_loss(out, batch, w, system)
    expected = sum(getattr(w, f"lam_{n}") * res.terms[n] for n in TERMS)
    assert_close(res.total, expected, rtol=1e-6, atol=1e-7, msg="Σ λ·term (float32)")


@pytest.mark.parametrize("term", TERMS)
def test_zero_weight_drops_term_even_when_nan(tiny_out, term: str) -> None:
    out, batch, system = tiny_out
    weights = ALL_TERMS.model_copy(update={f"lam_{term}": 0.0})
    hooks = DebugHooks(DebugConfig(nan_loss_term=term, nan_from_step=0, nan_n_steps=1))
    res = hooks.loss(compute_loss(out, batch, weights, system), out, batch, weights, step=0)
    assert torch.isnan(res.terms[term])
    assert torch.isfinite(res.total), f"a NaN in the unused term {term!r} must not reach the total"
    expected = sum(getattr(weights, f"lam_{n}") * res.terms[n] for n in TERMS if n != term)
    assert_close(res.total, expected, rtol=1e-6, atol=1e-7, msg="the other terms are unchanged")


@pytest.mark.parametrize("term", TERMS)
def test_debug_hooks_make_only_that_term_nan(tiny_out, term: str) -> None:
    out, batch, system = tiny_out
    hooks = DebugHooks(DebugConfig(nan_loss_term=term, nan_from_step=3, nan_n_steps=2))
    plain = compute_loss(out, batch, ALL_TERMS, system)
    assert hooks.loss(plain, out, batch, ALL_TERMS, step=2) is plain
    assert hooks.loss(plain, out, batch, ALL_TERMS, step=5) is plain
    res = hooks.loss(plain, out, batch, ALL_TERMS, step=4)
    assert {n for n, t in res.terms.items() if not torch.isfinite(t)} == {term}
    assert torch.isnan(res.total)
    assert hooks.runs_eagerly(4) and not hooks.runs_eagerly(5)


def test_debug_hooks_refuse_an_unknown_term() -> None:
    with pytest.raises(ValueError, match="nan_loss_term"):
        DebugHooks(DebugConfig(nan_loss_term="nope"))


# ---------------------------------------------------------------- stability on a rank-deficient R̂


def _training_step(system: SystemConfig, eigvec_fault: bool = False) -> RisNet:
    """Forward + loss (every term on, lam_gap and lam_margin > 0) + backward with a tiny model."""
    torch.manual_seed(0)
    model = RisNet(system, ModelConfig(d_model=16, n_layers=1, n_heads=2))
    batch = _batch(system, n=8)
    out = model(batch.y, batch.H, batch.codes)
    weights = LossWeights(lam_cov=1.0, lam_k=1.0, lam_aux=1.0, lam_gap=0.5, lam_margin=0.5)
    total = compute_loss(out, batch, weights, system).total
    if eigvec_fault:
        total = total + 0.1 * eigenvector_alignment_loss(out.cov_factor, batch)
    total.backward()
    return model


def test_training_step_on_rank_deficient_covariance_has_finite_gradients() -> None:
    # default 12×12 system: R̂ = F·Fᴴ is 144×144 of rank ≤ K_MAX = 5
    model = _training_step(SystemConfig())
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == [], f"non-finite or missing gradients: {bad}"


def test_eigenvector_fault_produces_nonfinite_gradients() -> None:
    # the seed's _subspace_align (eigenvectors of the N×N R̂ of rank ≤ K_MAX): proves the check above can fail.
    # Tiny system (N = 16 > K_MAX = 3): the default 144×144 eigh backward costs ~10 s on a CPU.
    model = _training_step(tiny_config().system, eigvec_fault=True)
    assert any(p.grad is not None and not torch.isfinite(p.grad).all() for p in model.parameters()), (
        "FaultPlants(eigvec_loss=True) must reproduce NaN gradients")
