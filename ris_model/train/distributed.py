"""Data-parallel training over several processes: the process group and the collectives the trainer needs
(SCIENCE.md, "The trainer"; docs/ARCHITECTURE.md "Multi-GPU training").

Owns: DistContext, StopReason, backend_for, tcp_store, say_ready, all_ready, init_process_group, STOP_CODES;
each rank's share of the scenes is ris_model.scenes' (rank_share, n_global_batches, check_shardable).
Imports no worker, Celery or HTTP code: the worker's launcher (worker/launcher.py) starts the processes and
hands each its rank; this module only joins them.

The contract, shared by every rank:
- a step has one *global batch* of `world_size x batch_size` scenes: the per-rank batch is the configured
  `data.batch_size`, so W processes train on W times as many scenes per optimizer step;
- global batch b of an epoch holds the scenes [b·B·W, (b+1)·B·W) of that epoch (B = batch_size, W = world
  size); rank r takes [b·B·W + r·B, b·B·W + (r+1)·B). A short last global batch is split as evenly as possible
  in rank order. No two ranks see the same scene, and the scenes of an epoch do not depend on W;
- gradients are averaged over the ranks by DistributedDataParallel; the decision to skip a non-finite step,
  and to stop (cancel, time limit), is taken by all ranks together;
- rank 0 alone validates, writes checkpoints and sends metric points, with totals over all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch._C._distributed_c10d import TCPStore  # where torch.distributed itself takes it from (typed)
from torch.distributed.distributed_c10d import Store

Backend = Literal["nccl", "gloo"]
#: Why a run stops before its end: a cancel request or the worker's time limit.
StopReason = Literal["cancel", "timeout"]

#: The stop reasons as the integers that ranks all-reduce (max): rank 0 decides, every rank follows.
STOP_CODES: dict[StopReason | None, int] = {None: 0, "cancel": 1, "timeout": 2}
_STOP_REASONS = {code: reason for reason, code in STOP_CODES.items()}

#: Seconds the ranks have to reach rank 0's store.
STORE_TIMEOUT = timedelta(minutes=5)
#: How long a collective may wait for a slow rank (rank 0 validates and checkpoints while the others wait).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def backend_for(device: torch.device) -> Backend:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def tcp_store(port: int, world_size: int, *, is_master: bool) -> tuple[Store, int]:
    """Rank 0's rendezvous store on 127.0.0.1 (port 0: a free one), or a client of it; and its port."""
    store = TCPStore("127.0.0.1", port, world_size, is_master=is_master, timeout=STORE_TIMEOUT,
                          wait_for_workers=False)
    return store, int(store.port)


def say_ready(store: Store, rank: int) -> None:
    """Tell rank 0 (through the store) that this rank runs and is about to join the group."""
    store.set(f"rank-ready/{rank}", "1")


def all_ready(store: Store, world_size: int) -> bool:
    """Whether every rank 1..world_size-1 said it is ready (a non-blocking look at the store)."""
    return bool(store.check([f"rank-ready/{r}" for r in range(1, world_size)]))


def init_process_group(store: Store, *, rank: int, world_size: int, device: torch.device) -> None:
    """Join the default process group through `store` (a TCPStore that rank 0 hosts)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the data-parallel group; world_size 1 means no group (no collective runs)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: validates, writes checkpoints and sends metric points."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum_(self, tensor: Tensor) -> Tensor:
        """All-reduce `tensor` in place (sum over ranks) and return it; no-op without a group."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree_stop(self, reason: StopReason | None, device: torch.device) -> StopReason | None:
        """Rank 0's stop reason, on every rank (the other ranks pass None)."""
        if not self.distributed:
            return reason
        code = torch.tensor([STOP_CODES[reason] if self.is_main else 0], device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return _STOP_REASONS[int(code.item())]


#: The context of a single-process run.
SINGLE = DistContext()
