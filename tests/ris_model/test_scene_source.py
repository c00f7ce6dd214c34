"""SceneSource against the data contract's streams (SCIENCE.md, "Scenes"): every scene is a pure function of
(seed, split, indices). A fixed pool is drawn in chunks of POOL_CHUNK scenes from (seed, split, chunk), a fresh
train batch from (seed, TRAIN, epoch, batch), the fixed train pool's order of an epoch from (seed, PERMUTATION,
epoch); the val batches are the val pool in order. The stream seeds themselves are pinned: a data seed names the
same scenes in every release."""

from __future__ import annotations

import torch

from api_schemas import DataConfig
from ris_model.scenes import POOL_CHUNK, SceneBatch, SceneSource, Split, generate_scenes, make_generator, stream_seed
from tests.ris_model.conftest import tiny_system

CPU = torch.device("cpu")
SYSTEM = tiny_system()


def _same(a: SceneBatch, b: SceneBatch) -> bool:
    return len(a) == len(b) and torch.equal(a.y, b.y) and torch.equal(a.k, b.k) and torch.equal(a.H, b.H)


def _drawn(n: int, seed: int, *, symbols_constant: bool = False) -> SceneBatch:
    return generate_scenes(SYSTEM, n, generator=make_generator(seed, CPU), device=CPU,
                           symbols_constant=symbols_constant)


def test_stream_seeds_are_pinned_63_bit_values() -> None:
    seeds = [stream_seed(0, Split.TRAIN, 0, 0), stream_seed(7, Split.VAL, 1), stream_seed(3, Split.PERMUTATION, 2)]
    assert seeds == [2094613214458313471, 178759216615823961, 1867032126034796109]
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_fixed_pool_is_its_chunks_each_drawn_from_its_own_stream() -> None:
    source = SceneSource(SYSTEM, DataConfig(n_train=64, n_val=8, batch_size=8, seed=3), CPU, symbols_constant=True)
    pool = source.pool(Split.VAL, POOL_CHUNK + 2)
    for chunk, size in ((0, POOL_CHUNK), (1, 2)):
        expected = _drawn(POOL_CHUNK, stream_seed(3, Split.VAL, chunk), symbols_constant=True)
        part = pool.index(torch.arange(chunk * POOL_CHUNK, chunk * POOL_CHUNK + size))
        assert _same(part, expected.index(torch.arange(size))), chunk
    assert _same(source.pool(Split.VAL, 5), pool.index(torch.arange(5)))  # a shorter read: the same first scenes


def test_a_fresh_train_batch_is_drawn_from_its_epoch_and_batch_stream() -> None:
    source = SceneSource(SYSTEM, DataConfig(n_train=64, n_val=8, batch_size=8, seed=3), CPU, symbols_constant=True)
    assert _same(source.train_batch(2, 5), _drawn(8, stream_seed(3, Split.TRAIN, 2, 5), symbols_constant=True))


def test_the_fixed_train_pool_s_order_in_an_epoch_comes_from_its_permutation_stream() -> None:
    data = DataConfig(n_train=48, n_val=8, batch_size=8, seed=5, fresh_train_each_epoch=False)
    source = SceneSource(SYSTEM, data, CPU)
    order = torch.randperm(48, generator=make_generator(stream_seed(5, Split.PERMUTATION, 2), CPU))
    assert _same(source.train_batch(2, 1), source.pool(Split.TRAIN_POOL, 48).index(order[8:16]))


def test_train_batches_start_at_the_batch_asked_for() -> None:
    source = SceneSource(SYSTEM, DataConfig(n_train=32, n_val=8, batch_size=8, seed=3), CPU)
    batches = list(source.train_batches(1, start=2))
    assert len(batches) == 2
    assert _same(batches[0], source.train_batch(1, 2)) and _same(batches[1], source.train_batch(1, 3))


def test_a_default_source_draws_new_symbols_per_snapshot_and_validates_on_its_val_pool() -> None:
    source = SceneSource(SYSTEM, DataConfig(n_train=32, n_val=300, batch_size=8, seed=3), CPU)
    assert source.symbols_constant is False
    assert _same(source.train_batch(0, 0), _drawn(8, stream_seed(3, Split.TRAIN, 0, 0)))
    val = source.pool(Split.VAL, 300)
    batches = list(source.val_batches())  # at least 256 scenes a batch
    assert [len(b) for b in batches] == [256, 44]
    assert _same(SceneBatch.cat(batches), val)
    small = list(source.val_batches(batch_size=128))
    assert [len(b) for b in small] == [128, 128, 44]
    assert _same(SceneBatch.cat(small), val)


def test_the_seed_s_leak_validates_on_the_first_train_batch() -> None:
    data = DataConfig(n_train=32, n_val=8, batch_size=8, seed=3)
    leaky = SceneSource(SYSTEM, data, CPU, val_from_train=True)
    [val] = list(leaky.val_batches())
    assert _same(val, leaky.train_batch(0, 0))
