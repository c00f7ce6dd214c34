"""ris_model.scenes: SceneBatch contents, the measurement model of the data contract, and split
independence (SCIENCE.md, "Scenes")."""

from __future__ import annotations

import hashlib
import math
from dataclasses import fields

import pytest
import torch
from torch.testing import assert_close

from api_schemas import DataConfig, SystemConfig
from ris_model import scenes as scenes_module
from ris_model.scenes import SceneBatch, SceneSource, Split, generate_scenes, make_generator
from tests.ris_model.conftest import tiny_system

CPU = torch.device("cpu")


def _scenes(system: SystemConfig, n: int, seed: int = 7, **kw) -> SceneBatch:
    return generate_scenes(system, n, generator=make_generator(seed, CPU), device=CPU, **kw)


def _scene_hashes(batch: SceneBatch) -> list[str]:
    """One hash per scene from its labels and inputs rounded to 1e-4 (k, φ, θ, r, p, y, a slice of H)."""
    parts = [batch.k[:, None], batch.azimuth, batch.elevation, batch.range_m, batch.power,
             torch.view_as_real(batch.y).flatten(1), torch.view_as_real(batch.H[:, :, :4]).flatten(1)]
    rows = torch.cat([p.double().flatten(1) for p in parts], 1).mul(1e4).round().long().numpy()
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]


# ---------------------------------------------------------------- shapes and labels


def test_generate_scenes_shapes_and_dtypes() -> None:
    s = tiny_system()
    b = _scenes(s, 10)
    B, L, M, N, K = 10, s.n_snapshots, s.n_bs_antennas, s.n_ris, s.k_max
    expected = {
        "y": ((B, L, M), torch.complex64), "H": ((B, M, N), torch.complex64),
        "codes": ((B, L, N), torch.complex64), "snr_db": ((B,), torch.float32), "k": ((B,), torch.int64),
        "azimuth": ((B, K), torch.float32), "elevation": ((B, K), torch.float32),
        "range_m": ((B, K), torch.float32), "power": ((B, K), torch.float32), "mask": ((B, K), torch.bool),
        "A": ((B, N, K), torch.complex64),
    }
    for name, (shape, dtype) in expected.items():
        t = getattr(b, name)
        assert (tuple(t.shape), t.dtype) == (shape, dtype), name
    assert len(b) == B


def test_generate_scenes_k_in_range_and_mask_is_first_k_slots() -> None:
    s = SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4)  # K_MAX = 5
    b = _scenes(s, 2000)
    assert b.k.min() == 1 and b.k.max() == s.k_max, "every K in 1..K_MAX occurs in 2000 scenes"
    assert torch.equal(b.mask, torch.arange(s.k_max)[None, :] < b.k[:, None])
    absent = ~b.mask
    for name in ("azimuth", "elevation", "range_m", "power"):
        assert torch.all(getattr(b, name)[absent] == 0), f"{name} is zero in absent slots"
    assert torch.all(b.A.transpose(1, 2)[absent] == 0), "steering columns are zero in absent slots"


def test_generate_scenes_labels_lie_in_field_of_view() -> None:
    s = SystemConfig()
    b = _scenes(s, 1000)
    m = b.mask
    assert b.azimuth[m].abs().max() <= math.radians(s.azimuth_max_deg)
    assert b.elevation[m].abs().max() <= math.radians(s.elevation_max_deg)
    assert s.range_min_m <= b.range_m[m].min() and b.range_m[m].max() <= s.range_max_m
    assert s.power_min <= b.power[m].min() and b.power[m].max() <= s.power_max
    assert s.snr_min_db <= b.snr_db.min() and b.snr_db.max() <= s.snr_max_db


def test_each_scene_and_slot_draws_its_own_power() -> None:
    s = tiny_system()
    b = _scenes(s, 256)
    for slot in range(s.k_max):
        present = b.power[b.mask[:, slot], slot]
        assert present.unique().numel() == present.numel() > 1, slot
        assert s.power_min <= float(present.min()) and float(present.max()) <= s.power_max


def test_infeasible_separation_is_refused_naming_the_source_and_the_fix() -> None:
    # a field of view 2° × 2° deep 0.4 m: a second source cannot be 3° or 0.5 m away from the first
    s = SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4, k_max=2, azimuth_max_deg=1.0,
                     elevation_max_deg=1.0, range_min_m=1.0, range_max_m=1.4, min_separation_deg=3.0,
                     min_separation_m=0.5)
    with pytest.raises(ValueError) as info:
        _scenes(s, 64)
    assert str(info.value) == ("cannot place source 2 at min_separation_deg=3.0, min_separation_m=0.5 within the "
                               "field of view; lower them or k_max")


def test_channel_mean_energy_is_m_times_n() -> None:
    s = SystemConfig()
    b = _scenes(s, 2000)
    energy = b.H.abs().square().sum((1, 2)).double()  # ‖H‖²_F per scene
    # E‖H‖²_F = M·N; only the NLoS part is random: std of the mean ≲ 0.1 %, so 1 % is > 10 σ
    assert_close(energy.mean(), torch.tensor(float(s.n_bs_antennas * s.n_ris), dtype=torch.float64),
                 rtol=0.01, atol=0, msg="E‖H‖²_F = M·N (the data contract)")


def test_measured_snr_matches_drawn_snr() -> None:
    # Per scene, split each y_l into its component in span(H·diag(c_l)·A) (signal + k dims of noise) and the
    # orthogonal rest (noise only, M − k dims): σ̂² = Σ_l ‖P⊥·y_l‖² / (L·(M − k)), signal = mean_l ‖P·y_l‖² − k·σ̂².
    s = SystemConfig(n_snapshots=8)  # M = 16 > K_MAX = 5; L = 8 ≠ M, so that a mean over the wrong axis shows
    b = _scenes(s, 1024)
    y, H, c, A = (t.to(torch.complex128) for t in (b.y, b.H, b.codes, b.A))
    G = (H.unsqueeze(1) @ (c.unsqueeze(-1) * A.unsqueeze(1))) * b.mask[:, None, None, :]  # [B, L, M, K]
    U, S, _ = torch.linalg.svd(G, full_matrices=False)
    U = U * (S > 1e-9 * S[..., :1])[..., None, :]  # drop the absent (zero) columns
    in_span = (U.mH @ y.unsqueeze(-1)).abs().square().sum((-1, -2))  # [B, L]
    total = y.abs().square().sum(-1)
    k, L, M = b.k.double(), s.n_snapshots, s.n_bs_antennas
    sigma2 = (total - in_span).sum(1) / (L * (M - k))
    signal = in_span.mean(1) - k * sigma2
    ratio = signal / (M * sigma2) / 10 ** (b.snr_db.double() / 10)  # measured / drawn SNR, linear
    # per-scene ratio std ≈ 0.11 (estimation noise), so the mean over 1024 scenes has std ≈ 0.0035
    assert_close(ratio.mean(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=0.02,
                 msg="SNR = mean_l ‖H·diag(c_l)·A·s_l‖² / (M·σ²) (the data contract)")
    high = b.snr_db > 10  # there the estimate is good per scene (≲ 0.5 dB)
    db_err = 10 * torch.log10(ratio[high].clamp_min(1e-9))
    assert db_err.abs().median() < 0.5, f"median |measured − drawn| = {db_err.abs().median():.3f} dB"


def _recovered_symbols(b: SceneBatch) -> torch.Tensor:
    """Least-squares s_l from y_l = H·diag(c_l)·A·s_l (+ noise at 60 dB), complex128 [B, L, K] (present slots)."""
    H, c, A = (t.to(torch.complex128) for t in (b.H, b.codes, b.A))
    G = H.unsqueeze(1) @ (c.unsqueeze(-1) * A.unsqueeze(1))  # [B, L, M, K]: H·diag(c_l)·A
    k = int(b.k[0])
    return torch.linalg.lstsq(G[..., :k], b.y.to(torch.complex128).unsqueeze(-1)).solution.squeeze(-1)


def _single_k_high_snr_system() -> SystemConfig:
    return SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=8, n_snapshots=4, k_max=1, snr_min_db=60.0,
                        snr_max_db=60.0)


def test_symbols_differ_across_snapshots() -> None:
    s = _recovered_symbols(_scenes(_single_k_high_snr_system(), 64))  # [B, L, 1]
    spread = (s - s[:, :1]).abs().amax(1) / s.abs().amax(1)
    assert torch.all(spread > 0.05), "symbols are drawn i.i.d. per snapshot (SCIENCE.md, 'System model')"


def test_symbols_constant_switch_makes_snapshot_symbols_identical() -> None:
    s = _recovered_symbols(_scenes(_single_k_high_snr_system(), 64, symbols_constant=True))
    # noise at 60 dB leaves ~1e-3 relative error in the recovered symbols
    assert_close(s, s[:, :1].expand_as(s), rtol=0.0, atol=1e-2 * float(s.abs().max()),
                 msg="symbols_constant=True reproduces the seed's defect (same s in every snapshot)")


@pytest.mark.parametrize(("sep_deg", "sep_m"), [(3.0, 0.5), (20.0, 5.0)], ids=["default", "stricter"])
def test_generate_scenes_respects_min_separation(sep_deg: float, sep_m: float) -> None:
    s = SystemConfig(min_separation_deg=sep_deg, min_separation_m=sep_m)
    b = _scenes(s, 4096, seed=2)
    sep = math.radians(sep_deg)
    violations = 0
    for i in range(s.k_max):
        for j in range(i):
            both = b.mask[:, i] & b.mask[:, j]
            separated = (((b.azimuth[:, i] - b.azimuth[:, j]).abs() >= sep)
                         | ((b.elevation[:, i] - b.elevation[:, j]).abs() >= sep)
                         | ((b.range_m[:, i] - b.range_m[:, j]).abs() >= sep_m))
            violations += int((both & ~separated).sum())
    assert violations == 0, f"{violations} source pairs closer than {sep_deg}° / {sep_m} m"


def test_covariance_factor_gives_trace_one_covariance() -> None:
    b = _scenes(tiny_system(), 50)
    F = b.covariance_factor()
    trace = F.abs().square().sum((1, 2))  # tr(F·Fᴴ) = ‖F‖²_F
    assert_close(trace, torch.ones(50), rtol=0, atol=1e-5, msg="target R is trace-normalized (float32)")


def test_covariance_factor_has_rank_k() -> None:
    b = _scenes(tiny_system(), 50)
    eigs = torch.linalg.eigvalsh((b.covariance_factor().mH @ b.covariance_factor()).to(torch.complex128))
    rank = (eigs > 1e-6).sum(-1)
    assert torch.equal(rank, b.k)


# ---------------------------------------------------------------- reproducibility and splits


def test_same_seed_gives_identical_scenes() -> None:
    a, b = _scenes(tiny_system(), 20, seed=5), _scenes(tiny_system(), 20, seed=5)
    for name in ("y", "H", "codes", "snr_db", "k", "azimuth", "elevation", "range_m", "power", "mask", "A"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_different_seed_gives_different_scenes() -> None:
    a, b = _scenes(tiny_system(), 20, seed=5), _scenes(tiny_system(), 20, seed=6)
    assert not set(_scene_hashes(a)) & set(_scene_hashes(b))


def _source(seed: int = 0, **data) -> SceneSource:
    return SceneSource(tiny_system(), DataConfig(**{"n_train": 64, "n_val": 64, "batch_size": 16, "seed": seed,
                                                    **data}), CPU)


def test_splits_share_no_scene() -> None:
    src = _source()
    pools = {
        "train_fresh": SceneBatch.cat([src.train_batch(e, b) for e in range(3) for b in range(src.n_batches)]),
        "train_pool": src.pool(Split.TRAIN_POOL, 256),
        "val": src.pool(Split.VAL, 256),
        "test": src.test_scenes(256),
    }
    hashes = {name: _scene_hashes(p) for name, p in pools.items()}
    for name, h in hashes.items():
        assert len(set(h)) == len(h), f"duplicate scenes within {name}"
    names = list(hashes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(hashes[a]) & set(hashes[b]), f"{a} and {b} share scenes"


def test_fresh_train_batches_same_index_same_scenes_across_sources() -> None:
    a, b = _source(), _source()
    assert _scene_hashes(a.train_batch(2, 3)) == _scene_hashes(b.train_batch(2, 3))


def test_fresh_train_batches_differ_across_epochs_and_seeds() -> None:
    a = _source()
    assert not set(_scene_hashes(a.train_batch(0, 0))) & set(_scene_hashes(a.train_batch(1, 0)))
    assert not set(_scene_hashes(a.train_batch(0, 0))) & set(_scene_hashes(_source(seed=1).train_batch(0, 0)))


def test_val_pool_differs_across_seeds() -> None:
    assert not set(_scene_hashes(_source(0).pool(Split.VAL, 64))) & set(_scene_hashes(_source(1).pool(Split.VAL, 64)))


def test_fixed_pool_scene_depends_on_index_only() -> None:
    small = _source().pool(Split.VAL, 1100)  # crosses a chunk boundary (POOL_CHUNK = 1024)
    large = _source().pool(Split.VAL, 2200)  # a fresh source: no shared cache
    assert _scene_hashes(small) == _scene_hashes(large.index(torch.arange(1100)))
    assert torch.equal(small.y, large.y[:1100])


def test_fixed_train_pool_epoch_is_a_permutation_of_the_pool() -> None:
    src = _source(fresh_train_each_epoch=False)
    epoch = SceneBatch.cat(list(src.train_batches(0)))
    assert sorted(_scene_hashes(epoch)) == sorted(_scene_hashes(src.pool(Split.TRAIN_POOL, 64)))
    assert _scene_hashes(epoch) != _scene_hashes(SceneBatch.cat(list(src.train_batches(1)))), "reshuffled per epoch"


def test_train_batches_cover_n_train_with_smaller_last_batch() -> None:
    src = _source(n_train=60)
    sizes = [len(b) for b in src.train_batches(0)]
    assert sizes == [16, 16, 16, 12]


def test_separation_fallback_redraws_rejected_scenes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one candidate per slot most scenes at a strict separation need the round-by-round redraw; the
    result must still be separated and the rejection sampling must not bias the field of view."""
    monkeypatch.setattr(scenes_module, "_CANDIDATES_PER_SLOT", 1)
    s = SystemConfig(min_separation_deg=20.0, min_separation_m=5.0)
    b = _scenes(s, 2048, seed=3)
    sep = math.radians(20.0)
    for i in range(s.k_max):
        for j in range(i):
            both = b.mask[:, i] & b.mask[:, j]
            separated = (((b.azimuth[:, i] - b.azimuth[:, j]).abs() >= sep)
                         | ((b.elevation[:, i] - b.elevation[:, j]).abs() >= sep)
                         | ((b.range_m[:, i] - b.range_m[:, j]).abs() >= 5.0))
            assert not bool((both & ~separated).any()), f"slots {j}, {i} closer than 20° / 5 m"
    first = b.azimuth[:, 0]
    assert abs(float(first.mean())) < 0.05 and float(first.abs().max()) <= math.radians(s.azimuth_max_deg)


@pytest.mark.parametrize(("candidates", "symbols_constant"), [(8, False), (1, False), (1, True)])
def test_deferred_placement_check_gives_the_in_line_checks_scenes(monkeypatch: pytest.MonkeyPatch,
                                                                   candidates: int, symbols_constant: bool) -> None:
    """generate_scenes reads the placement flag after queueing the batch and, where a scene failed, rewinds
    the generator and draws again with the check in line: the scenes are exactly the in-line check's (with one
    candidate per slot at a strict separation, nearly every batch takes the rewind), also with the seed's
    constant symbols."""
    monkeypatch.setattr(scenes_module, "_CANDIDATES_PER_SLOT", candidates)
    s = SystemConfig(min_separation_deg=20.0, min_separation_m=5.0)
    deferred = generate_scenes(s, 256, generator=make_generator(5, torch.device("cpu")), device="cpu",
                               symbols_constant=symbols_constant)
    in_line, placed = scenes_module._generate(s, 256, make_generator(5, torch.device("cpu")), torch.device("cpu"),
                                              symbols_constant, check_in_line=True)
    assert bool(placed.all())
    _, first_try = scenes_module._generate(s, 256, make_generator(5, torch.device("cpu")), torch.device("cpu"),
                                           symbols_constant, check_in_line=False)
    assert bool(first_try.all()) == (candidates == 8), "one candidate per slot must need the rewind"
    for f in fields(SceneBatch):
        assert torch.equal(getattr(deferred, f.name), getattr(in_line, f.name)), f.name


def test_channel_line_of_sight_angles_are_drawn_per_scene_over_their_ranges() -> None:
    """With κ = 1000 the BS→RIS channel is its line-of-sight term up to 3 % per entry, H ≈ √(MN)·b(ψ)·a_far(φ_bs,
    θ_bs)ᴴ, so its rank-one factors give back each scene's angles: the ULA's phase step π·sin ψ along b, and the
    plane wave's steps π·sin φ·cos θ and π·sin θ along the RIS rows and columns of a_far (half-wavelength
    spacing). Each angle is drawn per scene, uniformly over ψ, φ_bs ∈ [−60°, 60°] and θ_bs ∈ [−30°, 30°]."""
    system = SystemConfig(rician_kappa_min=1000.0, rician_kappa_max=1000.0)
    H = _scenes(system, 3000, seed=5).H.to(torch.complex128)  # [B, M, N]
    u, _, vh = torch.linalg.svd(H)
    b, a = u[:, :, 0], vh[:, 0, :].conj()  # b(ψ) and a_far, each up to one phase
    H_N, V_N = system.n_ris_h, system.n_ris_v

    def step(x: torch.Tensor) -> torch.Tensor:  # the mean phase step along the last axis, radians
        return torch.angle((x[..., 1:] * x[..., :-1].conj()).sum(-1))

    grid = a.reshape(-1, V_N, H_N)  # row n = i_v·N_H + i_h
    sin_psi = step(b) / math.pi
    sin_el = step(grid.transpose(1, 2)).sum(-1) / (H_N * math.pi)
    sin_az_cos_el = step(grid).sum(-1) / (V_N * math.pi)
    psi, el = torch.rad2deg(torch.asin(sin_psi)), torch.asin(sin_el)
    az, el = torch.rad2deg(torch.asin(sin_az_cos_el / el.cos())), torch.rad2deg(el)
    for name, angle, limit in (("psi", psi, 60.0), ("azimuth", az, 60.0), ("elevation", el, 30.0)):
        assert float(angle.abs().max()) <= limit + 0.5, (name, float(angle.abs().max()))
        assert float(angle.min()) < -limit + 1.0 and float(angle.max()) > limit - 1.0, (name, angle.min(), angle.max())
        inner = float((angle.abs() < limit / 3).double().mean())  # uniform: a third of the draws
        assert abs(inner - 1 / 3) < 0.04, (name, inner)
    # three independent draws per scene: no two of them move together
    corr = torch.corrcoef(torch.stack([psi, az, el]))
    assert float((corr - torch.eye(3, dtype=corr.dtype)).abs().max()) < 0.1, corr
