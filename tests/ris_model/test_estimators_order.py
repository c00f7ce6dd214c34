"""ris_model.estimators.order: the count by penalized likelihood over every count, the K-head's posterior as a
prior term."""

from __future__ import annotations

import math

import pytest
import torch

from api_schemas import SystemConfig
from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.order import count_fits, order_scores, residual_energy, select_order
from ris_model.scenes import SceneBatch, generate_scenes, make_generator

SYSTEM = SystemConfig(snr_min_db=20.0, snr_max_db=20.0)
GRID = SearchGrid.uniform(SYSTEM)
L = SYSTEM.n_snapshots


@pytest.fixture(scope="module")
def scenes() -> SceneBatch:
    """High-SNR scenes with 2..4 sources."""
    b = generate_scenes(SYSTEM, 40, generator=make_generator(5, torch.device("cpu")), device="cpu")
    keep = (b.k >= 2) & (b.k <= 4)
    return SceneBatch(**{f: getattr(b, f)[keep] for f in SceneBatch.__dataclass_fields__})


def _slots(b: SceneBatch, n_true: torch.Tensor, prior: torch.Tensor | None = None) -> SourceEstimate:
    """The first n_true[b] true sources, then spurious slots far from every source (FOV corners, 9.5 m)."""
    S = b.mask.shape[1]
    keep = torch.arange(S) < n_true[:, None]
    corners = torch.tensor([[-1.0, -0.5], [1.0, 0.5], [-1.0, 0.5], [1.0, -0.5], [0.0, 0.5]], dtype=torch.float64)
    az = torch.where(keep, b.azimuth.double(), corners[:S, 0])
    el = torch.where(keep, b.elevation.double(), corners[:S, 1])
    rng = torch.where(keep, b.range_m.double(), torch.full_like(b.range_m.double(), 9.5))
    return SourceEstimate(k=n_true.clone(), azimuth=az, elevation=el, range_m=rng, valid=keep, k_log_prob=prior)


def _log_prob_of(k: int, n: int, p: float) -> torch.Tensor:
    """A posterior [n, K_max] with mass p on count k, the rest spread evenly."""
    probs = torch.full((n, SYSTEM.k_max), (1 - p) / (SYSTEM.k_max - 1), dtype=torch.float64)
    probs[:, k - 1] = p
    return probs.log()


def test_order_scores_are_aic_plus_the_weighted_prior() -> None:
    energy = torch.tensor([[50.0, 30.0, 29.0]], dtype=torch.float64)
    var, snr = torch.tensor([2.0], dtype=torch.float64), torch.tensor([10.0], dtype=torch.float64)
    prior = torch.log(torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64))
    got = order_scores(energy, var, snr, L, prior, prior_weight=0.5, prior_decay_db=10.0)
    k = torch.arange(1, 4, dtype=torch.float64)
    want = -energy / 2.0 - (2 * L + 3) * k + 0.5 * L * math.exp(-1.0) * prior
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(order_scores(energy, var, snr, L, None), -energy / 2.0 - (2 * L + 3) * k)


@pytest.mark.parametrize(("gain", "k_hat"), [(2.3, 5), (2.0, 1)])
def test_a_source_is_kept_when_it_explains_more_than_akaikes_penalty(gain: float, k_hat: int) -> None:
    """Each source lowering E by gain·L·σ²: more than (2L + 3)/L = 2.19 keeps all five, less keeps one."""
    var = torch.ones(1, dtype=torch.float64)
    energy = 1000.0 - gain * L * torch.arange(5, dtype=torch.float64)[None]
    scores = order_scores(energy, var, torch.zeros(1, dtype=torch.float64), L, None)
    assert int(scores.argmax(1)) + 1 == k_hat


def test_true_positions_give_the_true_count(scenes: SceneBatch) -> None:
    out = select_order(scenes.y, scenes.H, scenes.codes, _slots(scenes, scenes.k), GRID, scenes.snr_db, n_splits=0)
    assert (out.k == scenes.k).float().mean() >= 0.9, (out.k, scenes.k)
    assert torch.equal(out.valid, torch.arange(out.valid.shape[1]) < out.k[:, None])
    right = out.k == scenes.k
    err = (out.azimuth - scenes.azimuth.double()).abs()[right][scenes.mask[right]]
    assert err.max() < math.radians(1.0), "the true slots stay on their sources"


def test_a_missed_source_is_found_and_counted(scenes: SceneBatch) -> None:
    """The slots hold all but the last true source: the polish of K sources places the spare slot on it (the
    default polish, split pass included; the other tests run without it, for time)."""
    out = select_order(scenes.y, scenes.H, scenes.codes, _slots(scenes, scenes.k - 1), GRID, scenes.snr_db)
    assert (out.k == scenes.k).float().mean() >= 0.85, (out.k, scenes.k)
    rows = torch.arange(len(scenes.k))
    missed = scenes.azimuth.double()[rows, scenes.k - 1]
    found = out.k == scenes.k
    nearest = (out.azimuth[found] - missed[found, None]).abs().masked_fill(~out.valid[found], torch.inf).amin(1)
    assert (nearest < math.radians(1.0)).float().mean() >= 0.9, nearest


def test_the_prior_decides_where_the_likelihood_cannot_and_not_where_it_can(scenes: SceneBatch) -> None:
    n = len(scenes.k)
    start = _slots(scenes, scenes.k, _log_prob_of(3, n, 0.6))
    told_20db = select_order(scenes.y, scenes.H, scenes.codes, start, GRID, scenes.snr_db, n_splits=0)
    # a spurious source captures 23–36 (units of σ², against Akaike's 2L + 3 = 35): a wrong prior tips a few
    assert (told_20db.k == scenes.k).float().mean() >= 0.8, "at 20 dB the data outweigh a wrong prior"
    assert (scenes.k == 3).float().mean() < 0.5, "the prior alone would be wrong in most scenes"
    told_minus_40db = select_order(scenes.y, scenes.H, scenes.codes, start, GRID, torch.full((n,), -40.0),
                                   n_splits=0)
    assert (told_minus_40db.k == 3).all(), "where σ² is told to be huge, the prior decides (AIC alone: 1)"
    assert torch.equal(told_20db.k_log_prob, start.k_log_prob)


def test_count_fits_never_lose_energy_by_adding_a_source(scenes: SceneBatch) -> None:
    fits = count_fits(scenes.y, scenes.H, scenes.codes, _slots(scenes, scenes.k), GRID, n_splits=0)
    assert fits.energy.shape == (len(scenes.k), SYSTEM.k_max)
    assert (fits.energy[:, 1:] <= fits.energy[:, :-1] * (1 + 1e-9)).float().mean() >= 0.95
    torch.testing.assert_close(fits.energy[:, 2], residual_energy(scenes.y, scenes.H, scenes.codes, fits.fits[2], GRID))
    assert all(bool((f.k == n + 1).all()) for n, f in enumerate(fits.fits))


def test_bad_estimates_are_refused(scenes: SceneBatch) -> None:
    start = _slots(scenes, scenes.k)
    nan = SourceEstimate(k=start.k, azimuth=start.azimuth.clone().fill_(torch.nan), elevation=start.elevation,
                         range_m=start.range_m, valid=start.valid)
    with pytest.raises(ValueError, match="finite position"):
        select_order(scenes.y, scenes.H, scenes.codes, nan, GRID, scenes.snr_db)
    short = SourceEstimate(k=start.k, azimuth=start.azimuth, elevation=start.elevation, range_m=start.range_m,
                           valid=start.valid, k_log_prob=torch.zeros(len(start.k), 2))
    with pytest.raises(ValueError, match="k_log_prob has 2 counts"):
        select_order(scenes.y, scenes.H, scenes.codes, short, GRID, scenes.snr_db)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path needs a GPU (device machine)")
def test_cuda_path_gives_the_cpu_counts(scenes: SceneBatch) -> None:
    cuda = torch.device("cuda")
    start = _slots(scenes, scenes.k - 1, _log_prob_of(2, len(scenes.k), 0.5))
    cpu = select_order(scenes.y, scenes.H, scenes.codes, start, GRID, scenes.snr_db)
    gpu = select_order(scenes.y.to(cuda), scenes.H.to(cuda), scenes.codes.to(cuda), start.map(lambda t: t.to(cuda)),
                       GRID, scenes.snr_db.to(cuda))
    assert gpu.k.device.type == "cuda"
    assert (gpu.k.cpu() == cpu.k).float().mean() >= 0.95, (gpu.k, cpu.k)
