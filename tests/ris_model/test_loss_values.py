"""ris_model.losses on hand-made inputs whose values are worked out by hand: the K label is K − 1, the
covariance NMSE, the eigengap hinge, the subspace margin, the geometry set loss (scales, Huber knee,
existence) and the weighting of compute_loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from api_schemas import LossWeights, SystemConfig
from ris_model.losses import (
    GEOMETRY_SCALE,
    compute_loss,
    covariance_nmse,
    eigengap_hinge,
    geometry_set_loss,
    match_slots,
    subspace_margin,
)
from ris_model.model.network import ModelOutput
from ris_model.scenes import SceneBatch, generate_scenes, make_generator

CPU = torch.device("cpu")
SYSTEM = SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4, k_max=3)


def _batch(k: list[int]) -> SceneBatch:
    """Generated scenes with exactly the counts `k`, in that order."""
    pool = generate_scenes(SYSTEM, 64, generator=make_generator(5, CPU), device=CPU)
    first = {int(c): i for i, c in reversed(list(enumerate(pool.k.tolist())))}
    return pool.index(torch.tensor([first[c] for c in k]))


def _out(batch: SceneBatch, **overrides: torch.Tensor) -> ModelOutput:
    """A prediction equal to the truth (geometry and covariance factor), zero logits; `overrides` replace fields."""
    B, K = batch.k.shape[0], SYSTEM.k_max
    fields = dict(
        cov_factor=batch.covariance_factor(), k_logits=torch.zeros(B, K), k_logits_spectral=torch.zeros(B, K),
        k_logits_direct=torch.zeros(B, K), azimuth=batch.azimuth.clone(), elevation=batch.elevation.clone(),
        range_m=batch.range_m.clone(), exist_logits=torch.zeros(B, K),
        gram_eigs=torch.tensor([[0.5, 0.3, 0.2]]).expand(B, K).clone(),
    )
    return ModelOutput(**{**fields, **overrides})


# ---------------------------------------------------------------- the K term


def test_k_term_is_cross_entropy_against_class_k_minus_one() -> None:
    # one scene per K = 1..K_MAX; its logits put 4.0 on class K − 1 and 0 elsewhere
    batch = _batch([1, 2, 3])
    logits = torch.zeros(3, 3)
    logits[torch.arange(3), batch.k - 1] = 4.0
    res = compute_loss(_out(batch, k_logits=logits), batch, LossWeights(lam_k=1.0), SYSTEM)
    expected = -math.log(math.exp(4.0) / (math.exp(4.0) + 2.0))  # 0.0360: the right class is the likely one
    assert_close(res.terms["k"], torch.tensor(expected), rtol=1e-6, atol=0.0)


def test_k_term_is_large_when_logits_favour_a_neighbouring_count() -> None:
    batch = _batch([1, 2])
    logits = torch.zeros(2, 3)
    logits[torch.arange(2), batch.k] = 4.0  # class K, i.e. the count K + 1
    res = compute_loss(_out(batch, k_logits=logits), batch, LossWeights(lam_k=1.0), SYSTEM)
    expected = -math.log(1.0 / (math.exp(4.0) + 2.0))  # 4.2395
    assert_close(res.terms["k"], torch.tensor(expected), rtol=1e-6, atol=0.0)


# ---------------------------------------------------------------- covariance NMSE


def _unit(n: int, i: int) -> torch.Tensor:
    v = torch.zeros(1, n, 1, dtype=torch.complex64)
    v[0, i, 0] = 1.0
    return v


def test_covariance_nmse_hand_values() -> None:
    e0, e1 = _unit(4, 0), _unit(4, 1)
    # R = e0e0ᴴ: an orthogonal rank-one guess misses ‖R̂ − R‖² = 2 against ‖R‖² = 1
    assert_close(covariance_nmse(e1, e0), torch.tensor(2.0))
    assert_close(covariance_nmse(e0, e0), torch.tensor(0.0))
    # twice the target: ‖2R − R‖² / ‖R‖² = 1
    assert_close(covariance_nmse(math.sqrt(2.0) * e0, e0), torch.tensor(1.0))
    # half energy on the right direction, half on another: R̂ = ½e0e0ᴴ + ½e1e1ᴴ → (¼ + ¼) / 1
    both = torch.cat([e0, e1], -1) / math.sqrt(2.0)
    assert_close(covariance_nmse(both, e0), torch.tensor(0.5))


def test_covariance_nmse_takes_a_double_precision_prediction() -> None:
    # a float64 model gives a complex128 factor; the target stays complex64
    assert_close(covariance_nmse(_unit(4, 1).to(torch.complex128), _unit(4, 0)), torch.tensor(2.0))


def test_covariance_nmse_of_a_zero_target_is_bounded_by_the_floor() -> None:
    # a zero target (no energy) divides by the 1e-12 floor, not by zero
    value = covariance_nmse(_unit(4, 0), torch.zeros(1, 4, 1, dtype=torch.complex64))
    assert_close(value, torch.tensor(1e12), rtol=1e-5, atol=0.0)


# ---------------------------------------------------------------- eigenvalue terms

EIGS = torch.tensor([[0.5, 0.4, 0.1]], dtype=torch.float64)


@pytest.mark.parametrize(("k", "expected"), [
    (1, 0.5 - (0.5 - 0.4) / (0.5 + 1e-6)),  # relative gap 0.2 < margin 0.5: hinge 0.3
    (2, 0.0),  # relative gap 0.3 / 0.4 = 0.75 ≥ 0.5
    (3, 0.0),  # the last eigenvalue against the zero padding: relative gap 1
])
def test_eigengap_hinge_hand_values(k: int, expected: float) -> None:
    value = eigengap_hinge(EIGS, torch.tensor([k]))
    assert_close(value, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def test_eigengap_hinge_uses_normalized_eigenvalues_and_its_margin() -> None:
    # scale-free: ten times the eigenvalues give the same hinge; margin 0.9 raises it by 0.4
    assert_close(eigengap_hinge(10 * EIGS, torch.tensor([1])), eigengap_hinge(EIGS, torch.tensor([1])))
    assert_close(eigengap_hinge(EIGS, torch.tensor([1]), margin=0.9),
                 torch.tensor(0.9 - 0.1 / (0.5 + 1e-6), dtype=torch.float32))


def test_eigengap_hinge_of_all_zero_eigenvalues_is_the_margin() -> None:
    # no energy: normalized eigenvalues are 0 (the 1e-30 floor), the gap is 0, the hinge is the whole margin
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    assert_close(eigengap_hinge(zeros, torch.tensor([2])), torch.tensor(0.5))


@pytest.mark.parametrize(("k", "expected"), [(1, 0.5), (2, 0.1), (3, 0.0)])
def test_subspace_margin_is_energy_outside_the_top_k(k: int, expected: float) -> None:
    assert_close(subspace_margin(2 * EIGS, torch.tensor([k])), torch.tensor(expected, dtype=torch.float32))


def test_eigen_terms_average_over_the_batch() -> None:
    eigs = EIGS.expand(2, 3)
    assert_close(subspace_margin(eigs, torch.tensor([1, 2])), torch.tensor(0.3))
    assert_close(eigengap_hinge(eigs, torch.tensor([1, 2])),
                 torch.tensor((0.5 - 0.1 / (0.5 + 1e-6)) / 2, dtype=torch.float32))


# ---------------------------------------------------------------- geometry set loss


def test_geometry_scales_are_five_degrees_and_one_meter() -> None:
    assert GEOMETRY_SCALE == pytest.approx((math.radians(5.0), math.radians(5.0), 1.0))


def test_set_loss_hand_value_inside_and_beyond_the_huber_knee() -> None:
    batch = _batch([2])
    out = _out(batch)
    # source 0: azimuth off by 5° (scaled 1.0, at the knee: ½·1²), range by 0.5 m (½·0.5² = 0.125)
    # source 1: elevation off by 10° (scaled 2.0, beyond the knee: 2 − ½ = 1.5)
    out.azimuth[0, 0] += math.radians(5.0)
    out.range_m[0, 0] += 0.5
    out.elevation[0, 1] += math.radians(10.0)
    assignment, loss = geometry_set_loss(out, batch, SYSTEM)
    assert assignment[0, :2].tolist() == [0, 1]
    location = (0.5 + 0.125 + 1.5) / 2  # mean over the two true sources
    existence = math.log(2.0)  # zero logits against targets (1, 1, 0)
    assert_close(loss, torch.tensor(location + existence), rtol=1e-5, atol=1e-6)


def test_set_loss_existence_term_rewards_matched_slots_only() -> None:
    batch = _batch([1])
    sure = torch.tensor([[20.0, -20.0, -20.0]])
    _, loss = geometry_set_loss(_out(batch, exist_logits=sure), batch, SYSTEM)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.tensor([[-20.0, 20.0, -20.0]])
    _, loss = geometry_set_loss(_out(batch, exist_logits=wrong), batch, SYSTEM)
    assert loss.item() == pytest.approx(40.0 / 3, rel=1e-4)  # two slots wrong by a logit of 20, averaged over 3


def test_set_loss_matches_swapped_predictions() -> None:
    batch = _batch([2])
    perm = torch.tensor([1, 0, 2])
    out = _out(batch, azimuth=batch.azimuth[:, perm], elevation=batch.elevation[:, perm],
               range_m=batch.range_m[:, perm])
    assignment, loss = geometry_set_loss(out, batch, SYSTEM)
    assert assignment[0, :2].tolist() == [1, 0]
    assert_close(loss, torch.tensor(math.log(2.0)), rtol=1e-5, atol=1e-6)


def test_match_slots_uses_only_valid_true_slots() -> None:
    # cost[pred, true]; with only true source 0 valid, it takes its cheapest slot, 1
    cost = torch.tensor([[[5.0, 0.0, 9.0], [1.0, 0.0, 9.0], [9.0, 9.0, 0.0]]])
    assert match_slots(cost, torch.tensor([[True, False, False]]))[0, 0].item() == 1
    # all valid, slots distinct: (true 0 ← 1, true 1 ← 0, true 2 ← 2) costs 1, (0 ← 0, 1 ← 1, 2 ← 2) costs 5
    assert match_slots(cost, torch.tensor([[True, True, True]]))[0].tolist() == [1, 0, 2]


# ---------------------------------------------------------------- weights


def test_compute_loss_total_is_each_weight_times_its_own_term() -> None:
    batch = _batch([1, 2])
    out = _out(batch, k_logits=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]),
               cov_factor=1.1 * batch.covariance_factor())
    out.azimuth[:, 0] += 0.05
    weights = LossWeights(lam_cov=2.0, lam_k=3.0, lam_aux=5.0, lam_gap=7.0, lam_margin=11.0)
    res = compute_loss(out, batch, weights, SYSTEM)
    t = res.terms
    assert all(float(v) > 0 for v in t.values()), {n: float(v) for n, v in t.items()}
    expected = 2.0 * t["cov"] + 3.0 * t["k"] + 5.0 * t["aux"] + 7.0 * t["gap"] + 11.0 * t["margin"]
    assert_close(res.total, expected)


def test_compute_loss_with_every_weight_zero_is_a_zero_tensor() -> None:
    batch = _batch([1, 2])
    res = compute_loss(_out(batch, cov_factor=1.1 * batch.covariance_factor()), batch,
                       LossWeights(lam_cov=0.0, lam_k=0.0, lam_aux=0.0), SYSTEM)
    assert isinstance(res.total, torch.Tensor) and res.total.shape == () and float(res.total) == 0.0
    assert float(res.terms["cov"]) > 0  # the terms are still reported


def test_compute_loss_returns_the_set_losss_assignment() -> None:
    batch = _batch([2, 3])
    perm = torch.tensor([2, 0, 1])
    out = _out(batch, azimuth=batch.azimuth[:, perm], elevation=batch.elevation[:, perm],
               range_m=batch.range_m[:, perm])
    res = compute_loss(out, batch, LossWeights(), SYSTEM)
    expected, _ = geometry_set_loss(out, batch, SYSTEM)
    assert torch.equal(res.assignment, expected)
    assert res.assignment[1].tolist() == [1, 2, 0]  # true source j sits in predicted slot perm⁻¹[j]


def test_eigen_terms_normalize_each_scene_by_its_own_energy() -> None:
    # scene 2 has a thousandth of scene 1's energy, scene 3 a millionth: each is normalized on its own, so all
    # three give the same values (the eigenvalues are not divided by a batch total, nor floored at 1)
    eigs = torch.cat([EIGS, 1e-3 * EIGS, 1e-6 * EIGS])
    k = torch.tensor([1, 1, 1])
    assert_close(subspace_margin(eigs, k), torch.tensor(0.5))
    assert_close(eigengap_hinge(eigs, k), torch.tensor(0.5 - 0.1 / (0.5 + 1e-6), dtype=torch.float32))


def test_set_loss_averages_over_the_valid_sources_of_the_whole_batch() -> None:
    # two scenes: the first as in the hand value above (errors 0.625 and 1.5), the second exact; three sources
    batch = _batch([2, 1])
    out = _out(batch)
    out.azimuth[0, 0] += math.radians(5.0)
    out.range_m[0, 0] += 0.5
    out.elevation[0, 1] += math.radians(10.0)
    _, loss = geometry_set_loss(out, batch, SYSTEM)
    assert_close(loss, torch.tensor((0.5 + 0.125 + 1.5) / 3 + math.log(2.0)), rtol=1e-5, atol=1e-6)


def test_set_loss_of_a_single_source_is_its_own_error() -> None:
    batch = _batch([1])
    out = _out(batch)
    out.azimuth[0, 0] += math.radians(5.0)  # scaled error 1: Huber ½
    _, loss = geometry_set_loss(out, batch, SYSTEM)
    assert_close(loss, torch.tensor(0.5 + math.log(2.0)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [6, 7], ids=["permutations", "hungarian"])
def test_match_slots_finds_a_planted_permutation(k: int) -> None:
    # cost 0 where predicted slot i = perm[j] serves true slot j, 1 elsewhere; with K = 7 the Hungarian path
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4][:k]) if k == 7 else torch.tensor([3, 0, 5, 1, 4, 2])
    cost = torch.ones(2, k, k)
    cost[:, perm, torch.arange(k)] = 0.0
    mask = torch.ones(2, k, dtype=torch.bool)
    mask[1, k - 2:] = False  # the second scene: its last two true slots absent
    got = match_slots(cost, mask)
    assert got.dtype == torch.long and got.shape == (2, k)
    assert got[0].tolist() == perm.tolist()
    assert got[1, : k - 2].tolist() == perm[: k - 2].tolist()
