"""Scene generation: batched, on the training device, from seeded independent per-split streams (SCIENCE.md, "Scenes").

Owns SceneBatch, generate_scenes, SceneSource, and each data-parallel rank's share of an epoch (rank_share,
n_global_batches, check_shardable: global batch b of W x B scenes holds [b·B·W, (b+1)·B·W); rank r takes
[b·B·W + r·B, b·B·W + (r+1)·B), a short last batch split as evenly as possible in rank order).
Every scene is a pure function of (seed, split, indices):
- fresh train data: batch b of epoch e is drawn from the stream (seed, TRAIN, e, b); with W data-parallel
  processes, rank r's part of global batch b is the stream (seed, TRAIN, e, b·W + r): the batches that one
  process would draw at b·W + r;
- a fixed pool (train when `fresh_train_each_epoch` is off, val, test) is drawn in chunks of POOL_CHUNK
  scenes from (seed, split, chunk), so scene i is reproducible from its index alone.
Splits use disjoint SeedSequence spawn keys, so no scene can appear in two splits. Resume needs no RNG state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np
import torch
from torch import Tensor

from api_schemas import DataConfig, SystemConfig
from ris_model.physics import bs_response, dft_codebook, steering, steering_far

POOL_CHUNK = 1024
_MAX_SEPARATION_ROUNDS = 64
#: candidates drawn at once per scene and slot (at the default separations ≥ 99.7 % of single draws are accepted)
_CANDIDATES_PER_SLOT = 8


class Split(IntEnum):
    TRAIN = 0
    VAL = 1
    TEST = 2
    TRAIN_POOL = 3  # the fixed train pool (fresh_train_each_epoch off)
    PERMUTATION = 4  # per-epoch order of the fixed train pool


@dataclass(frozen=True)
class SceneBatch:
    """A batch of B scenes. Axis 1 of y and codes is the snapshot axis (one RIS code per snapshot).

    y: complex64 [B, L, M] measurements; H: complex64 [B, M, N] BS→RIS channel; codes: complex64 [B, L, N];
    snr_db: float32 [B]; k: int64 [B] in 1..K_MAX; azimuth, elevation (radians), range_m (meters), power:
    float32 [B, K_MAX], zero in absent slots; mask: bool [B, K_MAX], True for the first k slots;
    A: complex64 [B, N, K_MAX] steering of the sources (zero columns where absent).
    """

    y: Tensor
    H: Tensor
    codes: Tensor
    snr_db: Tensor
    k: Tensor
    azimuth: Tensor
    elevation: Tensor
    range_m: Tensor
    power: Tensor
    mask: Tensor
    A: Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def covariance_factor(self) -> Tensor:
        """F = A·diag(√p) / √Σp, complex64 [B, N, K_MAX]; the target R = F·Fᴴ has trace 1."""
        p = self.power / self.power.sum(-1, keepdim=True)
        return self.A * p.sqrt().unsqueeze(1)

    def index(self, idx: Tensor) -> SceneBatch:
        """The scenes at `idx` (int64 [B'] on the batch's device)."""
        return SceneBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def cat(batches: list[SceneBatch]) -> SceneBatch:
        return SceneBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(SceneBatch)})


def stream_seed(seed: int, split: Split, *indices: int) -> int:
    """A 63-bit seed for the stream (seed, split, *indices); distinct keys give independent streams."""
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(int(split), *indices))
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def generate_scenes(system: SystemConfig, n: int, *, generator: torch.Generator,
                    device: torch.device | str, symbols_constant: bool = False) -> SceneBatch:
    """Draw `n` scenes per the data contract (ARCHITECTURE.md) on `device`.

    Args:
        system: geometry, FOV, SNR and power ranges.
        n: number of scenes B.
        generator: a torch.Generator on `device`; the only source of randomness.
        device: where the tensors are made.
        symbols_constant: test-only; reproduces the seed's defect (the same symbols in every snapshot).

    The placement check of the sources (see _draw_positions) reads one flag on the host; it is read after the
    whole batch has been queued, so that the GPU keeps working while the CPU waits. In the rare batch
    where a scene's candidates were all rejected, the generator is rewound and the batch drawn again with the
    check in line, which gives exactly the scenes that the in-line check gives for this generator state.
    """
    state = generator.get_state()  # host-side (seed, offset) for CUDA generators too: no device sync
    batch, placed = _generate(system, n, generator, torch.device(device), symbols_constant, check_in_line=False)
    if not bool(placed.all()):  # the host sync of scene generation, after everything is queued
        generator.set_state(state)
        batch, _ = _generate(system, n, generator, torch.device(device), symbols_constant, check_in_line=True)
    return batch


def _generate(system: SystemConfig, n: int, generator: torch.Generator, device: torch.device,
              symbols_constant: bool, *, check_in_line: bool) -> tuple[SceneBatch, Tensor]:
    """generate_scenes' draws; returns the batch and whether every scene placed its sources ([n] bool)."""
    u = _Uniform(generator, device)
    k_max, L = system.k_max, system.n_snapshots
    k = torch.randint(1, k_max + 1, (n,), generator=generator, device=device)
    mask = torch.arange(k_max, device=device) < k.unsqueeze(1)  # [B, K]
    az, el, rng, placed = _draw_positions(system, n, u, check_in_line=check_in_line)
    power = u(n, k_max, lo=system.power_min, hi=system.power_max)
    az, el, rng, power = (t * mask for t in (az, el, rng, power))
    A = steering(system, az, el, torch.where(mask, rng, torch.ones_like(rng)))  # [B, K, N]
    A = (A * mask.unsqueeze(-1)).transpose(1, 2).contiguous()  # [B, N, K]
    H = _draw_channel(system, n, u, generator, device)  # [B, M, N]
    codes = _codebook(system, device)  # [L, N], shared read-only by every batch
    # symbols s_l ~ CN(0, diag(p)), i.i.d. over snapshots l
    s_shape = (n, 1 if symbols_constant else L, k_max)
    s = torch.randn(s_shape, generator=generator, device=device, dtype=torch.complex64)
    s = (s * power.sqrt().unsqueeze(1)).expand(n, L, k_max)  # [B, L, K]
    x = (A @ s.transpose(1, 2)) * codes.T  # [B, N, L]: diag(c_l)·A·s_l
    x = (H @ x).transpose(1, 2)  # [B, L, M]
    snr_db = u(n, lo=system.snr_min_db, hi=system.snr_max_db)
    signal_power = x.abs().square().sum(-1).mean(-1)  # [B]: mean_l ‖x_l‖²
    sigma2 = signal_power / (system.n_bs_antennas * 10 ** (snr_db / 10))
    y = torch.randn(x.shape, generator=generator, device=device, dtype=torch.complex64)
    y.mul_(sigma2.sqrt()[:, None, None]).add_(x)  # y = x + noise, in place
    return SceneBatch(
        y=y, H=H, codes=codes.expand(n, L, -1), snr_db=snr_db, k=k, azimuth=az, elevation=el,
        range_m=rng, power=power, mask=mask, A=A,
    ), placed


@functools.lru_cache(maxsize=8)
def _codebook(system: SystemConfig, device: torch.device) -> Tensor:
    """The DFT codebook made once per (system, device): no host→device copy (and sync) per batch."""
    return dft_codebook(system, device=device)


class _Uniform:
    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self.generator, self.device = generator, device

    def __call__(self, *shape: int, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=self.generator, device=self.device)


def _draw_positions(system: SystemConfig, n: int, u: _Uniform, *, check_in_line: bool = True
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uniform (φ, θ, r) per slot; a source is redrawn until it is separated from the earlier ones by
    min_separation_deg in φ or θ, or min_separation_m in r (ARCHITECTURE.md, "The data contract"): rejection sampling,
    so each source is uniform over the part of the field of view that the earlier ones leave free.

    Each slot draws _CANDIDATES_PER_SLOT candidates per scene at once and keeps the first separated one, with
    no host synchronization; one check per batch finds the (at the default separations, never seen) scenes
    whose candidates were all rejected and redraws those with the round-by-round loop. With
    check_in_line=False that check is left to the caller (generate_scenes reads it after queueing the batch).

    Returns:
        azimuth, elevation (radians) and range (meters), each [n, K_MAX], and whether each scene placed all its
        sources ([n] bool; all True after the in-line check).

    Raises:
        ValueError: after _MAX_SEPARATION_ROUNDS rounds some scene still cannot place its source
            (the separation is infeasible for this FOV and K_MAX).
    """
    lo, hi = _position_bounds(system)
    cols: list[Tensor] = []  # per slot, [n, 3]
    placed = torch.ones(n, dtype=torch.bool, device=u.device)
    for _ in range(system.k_max):
        cand = torch.stack([u(n, _CANDIDATES_PER_SLOT, lo=a, hi=b) for a, b in zip(lo, hi, strict=True)], -1)
        ok = _separated(system, cand, [c[:, None, :] for c in cols])  # [n, R]
        first = ok.to(torch.uint8).argmax(1)  # the first separated candidate (0 where there is none)
        placed &= ok.any(1)
        cols.append(cand.gather(1, first[:, None, None].expand(-1, 1, 3)).squeeze(1))
    pos = torch.stack(cols, 1)  # [n, K, 3]
    if check_in_line and not bool(placed.all()):  # the one host sync of this function
        redo = (~placed).nonzero().squeeze(1)
        pos[redo] = _draw_positions_by_rounds(system, redo.numel(), u)
        placed = torch.ones_like(placed)
    return pos[..., 0], pos[..., 1], pos[..., 2], placed


def _position_bounds(system: SystemConfig) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    az_max, el_max = math.radians(system.azimuth_max_deg), math.radians(system.elevation_max_deg)
    return (-az_max, -el_max, system.range_min_m), (az_max, el_max, system.range_max_m)


def _separated(system: SystemConfig, cand: Tensor, earlier: list[Tensor]) -> Tensor:
    """Whether candidates [..., 3] (φ, θ, r) are separated from every earlier source [..., 3] (broadcast)."""
    sep = math.radians(system.min_separation_deg)
    ok = torch.ones(cand.shape[:-1], dtype=torch.bool, device=cand.device)
    for e in earlier:
        d = (cand - e).abs()
        ok &= (d[..., 0] >= sep) | (d[..., 1] >= sep) | (d[..., 2] >= system.min_separation_m)
    return ok


def _draw_positions_by_rounds(system: SystemConfig, n: int, u: _Uniform) -> Tensor:
    """The same rejection sampling, one candidate per scene and round (a host sync per round), for the scenes
    whose first candidates were all rejected. Returns [n, K_MAX, 3]."""
    lo, hi = _position_bounds(system)
    cols: list[Tensor] = []
    for slot in range(system.k_max):
        placed = torch.zeros(n, dtype=torch.bool, device=u.device)
        pos = torch.zeros(n, 3, device=u.device)
        for _ in range(_MAX_SEPARATION_ROUNDS):
            cand = torch.stack([u(n, lo=a, hi=b) for a, b in zip(lo, hi, strict=True)], -1)
            ok = _separated(system, cand, cols) & ~placed
            pos = torch.where(ok[:, None], cand, pos)
            placed |= ok
            if bool(placed.all()):
                break
        else:
            raise ValueError(
                f"cannot place source {slot + 1} at min_separation_deg={system.min_separation_deg}, "
                f"min_separation_m={system.min_separation_m} within the field of view; lower them or k_max")
        cols.append(pos)
    return torch.stack(cols, 1)


def _draw_channel(system: SystemConfig, n: int, u: _Uniform, generator: torch.Generator,
                  device: torch.device) -> Tensor:
    """Rician BS→RIS channel H = √(κ/(κ+1))·√(MN)·b·a_farᴴ + √(1/(κ+1))·G, complex64 [B, M, N]."""
    M, N = system.n_bs_antennas, system.n_ris
    kappa = u(n, lo=system.rician_kappa_min, hi=system.rician_kappa_max)
    psi = u(n, lo=-math.pi / 3, hi=math.pi / 3)
    az_bs = u(n, lo=-math.pi / 3, hi=math.pi / 3)
    el_bs = u(n, lo=-math.pi / 6, hi=math.pi / 6)
    b = bs_response(M, psi) * (math.sqrt(M * N) * (kappa / (kappa + 1)).sqrt())[:, None]  # [B, M], LoS weight in
    a_far = steering_far(system, az_bs, el_bs)  # [B, N]
    G = torch.randn((n, M, N), generator=generator, device=device, dtype=torch.complex64)
    # in place on the one [B, M, N] tensor (generation is memory-bound): H = w_nlos·G + b·a_farᴴ
    G.mul_((1 / (kappa + 1)).sqrt()[:, None, None])
    return G.baddbmm_(b.unsqueeze(-1), a_far.conj().unsqueeze(1))


def n_global_batches(n_train: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch: global batches of world_size x batch_size scenes over n_train scenes."""
    return math.ceil(n_train / (batch_size * world_size))


def rank_share(n_train: int, batch_size: int, world_size: int, rank: int, batch: int) -> tuple[int, int]:
    """(first scene index, number of scenes) of `rank`'s part of global batch `batch` of an epoch."""
    per_step = batch_size * world_size
    start = batch * per_step
    n = min(per_step, n_train - start)
    if n == per_step:
        return start + rank * batch_size, batch_size
    base, extra = divmod(n, world_size)  # the last, short global batch: as even as possible, in rank order
    return start + rank * base + min(rank, extra), base + (rank < extra)


def check_shardable(n_train: int, batch_size: int, world_size: int) -> None:
    """Raise ValueError when some rank would get no scene in the last global batch of an epoch."""
    last = n_train - (n_global_batches(n_train, batch_size, world_size) - 1) * batch_size * world_size
    if last < world_size:
        raise ValueError(
            f"data.n_train ({n_train}) leaves a last step of {last} scenes for {world_size} processes; "
            f"every process needs at least one: make n_train a multiple of {world_size} x data.batch_size "
            f"({world_size * batch_size}) or leave at least {world_size} scenes for the last step")


class SceneSource:
    """All scenes of one run: train batches by (epoch, batch), and the fixed val/test pools.

    With `world_size` > 1 this is one rank's source: `train_batch` returns `rank`'s part of a global batch of
    world_size x batch_size scenes (rank_share), and an epoch has that many fewer
    batches; val and test pools are whole on every rank."""

    def __init__(self, system: SystemConfig, data: DataConfig, device: torch.device | str,
                 *, symbols_constant: bool = False, val_from_train: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        self.system, self.data, self.device = system, data, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self._symbols_constant = symbols_constant
        self._val_from_train = val_from_train  # test-only: the seed's leak, val drawn from the train stream
        self._train_pool: SceneBatch | None = None
        self._pools: dict[Split, SceneBatch] = {}

    @property
    def symbols_constant(self) -> bool:
        return self._symbols_constant

    @property
    def n_batches(self) -> int:
        """Batches (optimizer steps) per epoch: global batches of world_size x batch_size scenes."""
        return n_global_batches(self.data.n_train, self.data.batch_size, self.world_size)

    def train_batch(self, epoch: int, batch: int) -> SceneBatch:
        """This rank's part of batch `batch` of epoch `epoch` (both from 0); the last batch may be smaller."""
        start, size = rank_share(self.data.n_train, self.data.batch_size, self.world_size, self.rank, batch)
        if self.data.fresh_train_each_epoch:
            stream = batch * self.world_size + self.rank
            g = make_generator(stream_seed(self.data.seed, Split.TRAIN, epoch, stream), self.device)
            return generate_scenes(self.system, size, generator=g, device=self.device,
                                   symbols_constant=self._symbols_constant)
        pool = self.pool(Split.TRAIN_POOL, self.data.n_train)
        g = make_generator(stream_seed(self.data.seed, Split.PERMUTATION, epoch), self.device)
        order = torch.randperm(self.data.n_train, generator=g, device=self.device)
        return pool.index(order[start:start + size])

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[SceneBatch]:
        for b in range(start, self.n_batches):
            yield self.train_batch(epoch, b)

    def pool(self, split: Split, n: int) -> SceneBatch:
        """The first `n` scenes of a fixed pool, drawn in chunks so scene i depends on i alone."""
        cached = self._pools.get(split)
        if cached is None or len(cached) < n:
            chunks = []
            for c in range(math.ceil(n / POOL_CHUNK)):
                g = make_generator(stream_seed(self.data.seed, split, c), self.device)
                chunks.append(generate_scenes(self.system, POOL_CHUNK, generator=g, device=self.device,
                                              symbols_constant=self._symbols_constant))
            cached = SceneBatch.cat(chunks)
            self._pools[split] = cached
        return cached.index(torch.arange(n, device=self.device))

    def val_batches(self, batch_size: int | None = None) -> Iterator[SceneBatch]:
        """The val pool in batches (the same scenes every epoch)."""
        if self._val_from_train:
            val = self.train_batch(0, 0)  # the seed's defect: "val" scenes taken from the train stream
        else:
            val = self.pool(Split.VAL, self.data.n_val)
        bs = batch_size or max(self.data.batch_size, 256)
        for start in range(0, len(val), bs):
            yield val.index(torch.arange(start, min(start + bs, len(val)), device=self.device))

    def test_scenes(self, n: int) -> SceneBatch:
        return self.pool(Split.TEST, n)
