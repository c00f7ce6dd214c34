"""ris_model.estimators.order: one add-or-drop move on a polished estimate against the residual (issue 6)."""

from __future__ import annotations

import pytest
import torch

from api_schemas import SystemConfig
from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.order import decide, order_moves, refine_order
from ris_model.estimators.polish import polish
from ris_model.scenes import SceneBatch, generate_scenes, make_generator

SYSTEM = SystemConfig(snr_min_db=20.0, snr_max_db=20.0)
GRID = SearchGrid.uniform(SYSTEM)


@pytest.fixture(scope="module")
def scenes() -> SceneBatch:
    """High-SNR scenes with 2..4 sources."""
    b = generate_scenes(SYSTEM, 40, generator=make_generator(5, torch.device("cpu")), device="cpu")
    keep = (b.k >= 2) & (b.k <= 4)
    return SceneBatch(**{f: getattr(b, f)[keep] for f in SceneBatch.__dataclass_fields__})


def _truth(b: SceneBatch) -> SourceEstimate:
    return SourceEstimate(k=b.k.clone(), azimuth=b.azimuth.double(), elevation=b.elevation.double(),
                          range_m=torch.where(b.mask, b.range_m.double(), torch.ones_like(b.range_m.double())),
                          valid=b.mask.clone())


def _missing_last(e: SourceEstimate) -> SourceEstimate:
    valid = e.valid & (torch.arange(e.valid.shape[1]) < (e.k - 1)[:, None])
    return SourceEstimate(k=e.k - 1, azimuth=e.azimuth, elevation=e.elevation, range_m=e.range_m, valid=valid)


def _with_ghost(e: SourceEstimate) -> SourceEstimate:
    """One spurious source after the true ones, far from every source (the FOV corner at 9.5 m)."""
    rows = torch.arange(len(e.k))
    az, el, rng, valid = e.azimuth.clone(), e.elevation.clone(), e.range_m.clone(), e.valid.clone()
    az[rows, e.k], el[rows, e.k], rng[rows, e.k], valid[rows, e.k] = -1.0, -0.5, 9.5, True
    return SourceEstimate(k=e.k + 1, azimuth=az, elevation=el, range_m=rng, valid=valid)


def test_true_count_is_kept(scenes: SceneBatch) -> None:
    out = refine_order(scenes.y, scenes.H, scenes.codes, _truth(scenes), GRID, scenes.snr_db)
    assert torch.equal(out.k, scenes.k) and torch.equal(out.valid, scenes.mask)
    assert torch.equal(out.azimuth[scenes.mask], scenes.azimuth.double()[scenes.mask]), "no move: unchanged"


def _polished(b: SceneBatch, e: SourceEstimate) -> SourceEstimate:
    """As in the pipeline: the moves start from a polished estimate."""
    return polish(b.y, b.H, b.codes, e, GRID)


def test_a_missed_source_is_added_near_it(scenes: SceneBatch) -> None:
    start = _polished(scenes, _missing_last(_truth(scenes)))
    out = refine_order(scenes.y, scenes.H, scenes.codes, start, GRID, scenes.snr_db)
    assert (out.k == scenes.k).float().mean() >= 0.9, (out.k, scenes.k)
    rows = torch.arange(len(scenes.k))
    missed_az = scenes.azimuth.double()[rows, scenes.k - 1]
    added = out.k == scenes.k
    nearest = (out.azimuth[added] - missed_az[added, None]).abs().masked_fill(~out.valid[added], torch.inf).amin(1)
    assert (nearest < 0.02).float().mean() >= 0.9, nearest  # within ~1° of the missed source


def test_a_spurious_source_is_dropped_and_the_true_ones_kept(scenes: SceneBatch) -> None:
    start = _polished(scenes, _with_ghost(_truth(scenes)))
    out = refine_order(scenes.y, scenes.H, scenes.codes, start, GRID, scenes.snr_db)
    assert (out.k == scenes.k).float().mean() >= 0.9, (out.k, scenes.k)
    dropped = out.k == scenes.k
    truth_az = scenes.azimuth.double()[dropped][scenes.mask[dropped]]
    assert (out.azimuth[dropped][out.valid[dropped]] - truth_az).abs().max() < 0.01, "the true ones kept, in order"


def test_no_drop_below_the_drop_snr_and_decide_applies_each_threshold(scenes: SceneBatch) -> None:
    start = _polished(scenes, _with_ghost(_truth(scenes)))
    kept = refine_order(scenes.y, scenes.H, scenes.codes, start, GRID, scenes.snr_db, drop_min_snr_db=30.0)
    assert (kept.k >= start.k).all(), "20 dB scenes below a 30 dB drop limit: nothing dropped"
    moves = order_moves(scenes.y, scenes.H, scenes.codes, start, GRID)
    room = start.k < SYSTEM.k_max
    assert torch.equal(decide(start, moves, torch.full_like(moves.energy, -1.0)).k,
                       torch.where(room, start.k + 1, start.k)), "a negative floor: every scene with room adds"
    assert torch.equal(decide(start, moves, torch.full_like(moves.energy, torch.inf), drop=False).k, start.k)


def test_unused_slots_may_hold_any_value(scenes: SceneBatch) -> None:
    """Slots past K̂ are ignored, whatever they hold (here NaN and a zero range)."""
    e = _truth(scenes)
    free = ~e.valid
    odd = SourceEstimate(k=e.k, azimuth=e.azimuth.masked_fill(free, torch.nan), elevation=e.elevation,
                         range_m=e.range_m.masked_fill(free, 0.0), valid=e.valid)
    out = refine_order(scenes.y, scenes.H, scenes.codes, odd, GRID, scenes.snr_db)
    assert torch.equal(out.k, scenes.k)
