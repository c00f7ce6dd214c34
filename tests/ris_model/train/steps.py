"""Counting the optimizer steps a block of training takes (one per batch is a contract of the trainer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch.optim.optimizer import register_optimizer_step_post_hook


@contextmanager
def count_optimizer_steps() -> Iterator[list[int]]:
    """Yields a list that gets one entry per optimizer step taken inside the block (any optimizer)."""
    calls: list[int] = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()
