"""CUDA execution helpers of the look pass: graph replay against launch overhead, compiled fusion
against memory traffic.

Owns CudaGraphed and compiled_on_cuda. The unrolled look pass launches ~1,000 small kernels per step whose GPU
time is shorter than their launch time; one graph replay launches them all at once. Rules for a graphed
function: no host synchronization, no host→device copies, no parameters or autograd, outputs of fixed shape. A
graph reads the memory that its capture read: its arguments are copied into that memory on each replay, and any
other tensor the function reads (a closure's constants) is the capture's own, kept alive with the graph, so such
tensors must hold the same values on every call (a grid, an index), never data. If capture fails (an op that
cannot be captured), CudaGraphed warns once and runs the function eagerly from then on.
Reference: PyTorch docs, "CUDA Graphs" (torch.cuda.graph, warm-up on a side stream).
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]
Key = tuple[object, Signature]


#: a captured graph: the function captured (kept alive: the tensors its closure reads are the graph's), its static
#: inputs and outputs, and the graph
_Entry = tuple[Callable[..., tuple[Tensor, ...]], list[Tensor], tuple[Tensor, ...], torch.cuda.CUDAGraph]


class CudaGraphed:
    """fn(*tensors) -> tuple of tensors, replayed from a graph captured per function code and input signature
    (shape, dtype, device); at most `max_graphs` kept (least recently used dropped, which frees its memory pool).
    A closure made anew on each call (same code, same constants) replays the graph of the first one, whose
    function is kept with the graph: the tensors it closes over are the ones the graph reads. Returns copies of
    the graph's outputs, so a later replay cannot overwrite tensors still in use."""

    def __init__(self, max_graphs: int = 2, warmup_calls: int = 2) -> None:
        self.max_graphs, self.warmup_calls = max_graphs, warmup_calls
        self.graphs: OrderedDict[Key, _Entry] = OrderedDict()
        self.disabled_reason: str | None = None
        self.captures = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> CudaGraphed:
        return CudaGraphed(self.max_graphs, self.warmup_calls)  # graphs belong to their tensors; start empty

    def __call__(self, fn: Callable[..., tuple[Tensor, ...]], *args: Tensor) -> tuple[Tensor, ...]:
        if self.disabled_reason is not None or torch.cuda.is_current_stream_capturing():
            return fn(*args)
        key: Key = (getattr(fn, "__code__", fn), tuple((tuple(a.shape), a.dtype, a.device) for a in args))
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(fn, args)
            except RuntimeError as exc:  # an op that cannot be captured: run eagerly from now on
                self.disabled_reason = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"CUDA graph capture failed, running eagerly: {self.disabled_reason}", stacklevel=2)
                torch.cuda.synchronize()
                return fn(*args)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        _, static_in, static_out, graph = entry
        for dst, src in zip(static_in, args, strict=True):
            dst.copy_(src)
        graph.replay()
        return tuple(o.clone() for o in static_out)

    def _capture(self, fn: Callable[..., tuple[Tensor, ...]], args: tuple[Tensor, ...]) -> _Entry:
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream(device=args[0].device)
        side.wait_stream(torch.cuda.current_stream(args[0].device))
        with torch.cuda.stream(side):  # warm-up: library handles and workspaces exist before capture
            for _ in range(self.warmup_calls):
                fn(*static_in)
        torch.cuda.current_stream(args[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = tuple(fn(*static_in))
        self.captures += 1
        return fn, static_in, static_out, graph


def compiled_on_cuda(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn unchanged on the CPU; on CUDA (first argument) `torch.compile(fn, fullgraph=True)`,
    which fuses a chain of elementwise ops into one kernel. Compiled on the first CUDA call (outside any graph
    capture: CudaGraphed warms up first); if compilation fails (no Triton, no compiler) it warns once and runs
    fn eagerly from then on."""
    compiled: Callable[..., Any] | None = None
    failed = False

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        nonlocal compiled, failed
        if failed or not args[0].is_cuda:
            return fn(*args)
        if compiled is None:
            # static shapes first (the training batch gets kernels specialized to its sizes); a second batch
            # size recompiles once with a dynamic batch dimension (torch's automatic dynamic shapes)
            compiled = torch.compile(fn, fullgraph=True)
        try:
            return compiled(*args)
        except Exception as exc:  # noqa: BLE001 (any compiler failure: Triton missing, toolchain, lowering)
            failed = True
            warnings.warn(f"torch.compile of {fn.__name__} failed, running eagerly: {type(exc).__name__}: {exc}",
                          stacklevel=2)
            return fn(*args)

    return wrapper
