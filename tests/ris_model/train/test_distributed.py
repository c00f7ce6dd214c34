"""Each rank's share of the scene stream (ris_model.scenes.rank_share, SceneSource with world_size > 1):
disjoint, complete, a pure function of (seed, split, index), and independent of the number of processes."""

from __future__ import annotations

import pytest
import torch

from api_schemas import DataConfig, SystemConfig
from ris_model.scenes import SceneBatch, SceneSource, check_shardable, n_global_batches, rank_share

SYSTEM = SystemConfig(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4, k_max=2)


@pytest.mark.parametrize(("n_train", "batch_size", "world_size"), [(64, 16, 2), (70, 16, 2), (100, 8, 3),
                                                                    (64, 16, 1), (37, 5, 4)])
def test_rank_shares_cover_every_scene_of_an_epoch_once(n_train: int, batch_size: int, world_size: int) -> None:
    seen: list[int] = []
    for b in range(n_global_batches(n_train, batch_size, world_size)):
        starts = []
        for r in range(world_size):
            start, size = rank_share(n_train, batch_size, world_size, r, b)
            assert size >= 1
            seen += range(start, start + size)
            starts.append(start)
        if (b + 1) * batch_size * world_size <= n_train:  # a full global batch: rank r at b·B·W + r·B
            assert starts == [b * batch_size * world_size + r * batch_size for r in range(world_size)]
    assert seen == list(range(n_train))


def test_a_last_step_with_fewer_scenes_than_processes_is_refused_naming_the_fix() -> None:
    check_shardable(66, 16, 2)
    with pytest.raises(ValueError) as info:
        check_shardable(65, 16, 2)
    assert str(info.value) == (
        "data.n_train (65) leaves a last step of 1 scenes for 2 processes; every process needs at least one: make "
        "n_train a multiple of 2 x data.batch_size (32) or leave at least 2 scenes for the last step")


def _same(a: SceneBatch, b: SceneBatch) -> bool:
    return len(a) == len(b) and torch.equal(a.y, b.y) and torch.equal(a.k, b.k)


def test_fresh_stream_rank_r_gets_what_one_process_draws_at_batch_b_w_plus_r() -> None:
    data = DataConfig(n_train=64, n_val=8, batch_size=8, seed=3)
    one = SceneSource(SYSTEM, data, "cpu")
    ranks = [SceneSource(SYSTEM, data, "cpu", rank=r, world_size=2) for r in range(2)]
    assert (one.n_batches, ranks[0].n_batches) == (8, 4)
    for b in range(4):
        for r in range(2):
            assert _same(ranks[r].train_batch(1, b), one.train_batch(1, 2 * b + r))
    assert not _same(ranks[0].train_batch(1, 0), ranks[1].train_batch(1, 0))  # no two ranks see the same scenes


def test_fixed_pool_two_ranks_split_what_one_process_takes_with_the_doubled_batch() -> None:
    data = DataConfig(n_train=48, n_val=8, batch_size=8, seed=5, fresh_train_each_epoch=False)
    doubled = SceneSource(SYSTEM, data.model_copy(update={"batch_size": 16}), "cpu")
    ranks = [SceneSource(SYSTEM, data, "cpu", rank=r, world_size=2) for r in range(2)]
    for b in range(3):
        joined = SceneBatch.cat([ranks[0].train_batch(2, b), ranks[1].train_batch(2, b)])
        assert _same(joined, doubled.train_batch(2, b))
