"""The trainable part of a training step — forward from the prepared inputs, the five loss terms and the
backward — replayed as CUDA graphs.

Owns GraphedLoss. Imports torch, api_schemas and ris_model.model.network/losses/scenes; knows nothing of the trainer.
Why: that part is ~1,300 small kernels (a 3-layer transformer over K_MAX tokens, the heads, the losses and their
backward), each shorter on the GPU than its launch on the CPU, so the GPU idled while the CPU issued them.
`torch.cuda.make_graphed_callables` captures the forward and the backward once per (phase, batch shape, loss
weights, autocast); a step then launches two graphs. The prepared inputs (the look pass, the measurement
spectrum) and the optimizer stay outside: they are parameter-free, or synchronize with the host.

Rules for the graphed part (checked by capture; if capture fails it warns once and the trainer runs eagerly):
no host synchronization (hence the Jacobi Gram spectrum of ris_model.spectral), no host→device copies, static
shapes. Parameters are updated in place (AdamW, load_state_dict), so the captured addresses stay valid.
Reference: PyTorch docs, "CUDA Graphs" → "Partial-network capture" (make_graphed_callables).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Hashable

import torch
from torch import Tensor, nn

from api_schemas import LossWeights, SystemConfig
from ris_model.losses import TERMS, LossResult, compute_loss
from ris_model.model.network import ModelOutput, RisNet
from ris_model.scenes import SceneBatch

#: the fields of a SceneBatch that the loss reads (the measurements never reach the graphed part)
TARGET_FIELDS = ("snr_db", "k", "azimuth", "elevation", "range_m", "power", "mask", "A")
_EMPTY = torch.empty(0)


class _StepLoss(nn.Module):
    """(prepared inputs, targets) → (total loss, K logits, assignment, unweighted terms): the graphed callable."""

    def __init__(self, model: RisNet, weights: LossWeights, system: SystemConfig, n_prepared: int) -> None:
        super().__init__()
        self.model, self.weights, self.system, self.n_prepared = model, weights, system, n_prepared

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        prepared, targets = tensors[: self.n_prepared], tensors[self.n_prepared:]
        out: ModelOutput = self.model.from_prepared(*prepared)
        batch = SceneBatch(y=_EMPTY, H=_EMPTY, codes=_EMPTY, **dict(zip(TARGET_FIELDS, targets, strict=True)))
        res = compute_loss(out, batch, self.weights, self.system)
        return (res.total, out.k_logits.detach(), res.assignment, *(res.terms[n].detach() for n in TERMS))


class GraphedLoss:
    """Graphed forward + loss + backward of `model` for one batch shape at a time (at most `max_graphs` kept;
    each holds a memory pool sized for its batch). Call `run`; it returns None where the eager path must run:
    not CUDA, model.cfg.cuda_graphs off, or capture failed once (then never again in this run)."""

    def __init__(self, model: RisNet, system: SystemConfig, max_graphs: int = 1) -> None:
        self.model, self.system, self.max_graphs = model, system, max_graphs
        self.graphs: OrderedDict[Hashable, nn.Module] = OrderedDict()
        self.disabled_reason: str | None = None
        self.captures = 0

    def run(self, batch: SceneBatch, weights: LossWeights, *, autocast: bool) -> tuple[LossResult, Tensor] | None:
        """Forward and loss of `batch` in training mode: (LossResult, K logits), with `total` ready for
        backward() (which replays the backward graph), or None (run eagerly)."""
        if self.disabled_reason is not None or not batch.y.is_cuda or not self.model.cfg.cuda_graphs:
            return None
        with _autocast(autocast):
            prepared = self.model.prepare(batch.y, batch.H, batch.codes)
        targets = tuple(getattr(batch, f) for f in TARGET_FIELDS)
        trainable = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        key = (tuple((tuple(t.shape), t.dtype) for t in (*prepared, *targets)), weights.model_dump_json(),
               autocast, trainable)
        graphed = self.graphs.get(key)
        if graphed is None:
            try:
                graphed = self._capture(prepared, targets, weights, autocast)
            except RuntimeError as exc:  # an op that cannot be captured: eager from now on
                self.disabled_reason = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"CUDA graph capture of the training step failed, running eagerly: "
                              f"{self.disabled_reason}", stacklevel=2)
                torch.cuda.synchronize()
                return None
            self.graphs[key] = graphed
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        total, k_logits, assignment, *terms = graphed(*prepared, *targets)
        return LossResult(total=total, terms=dict(zip(TERMS, terms, strict=True)), assignment=assignment), k_logits

    def _capture(self, prepared: tuple[Tensor, ...], targets: tuple[Tensor, ...], weights: LossWeights,
                 autocast: bool) -> nn.Module:
        step = _StepLoss(self.model, weights, self.system, len(prepared))
        sample = tuple(t.detach().clone() for t in (*prepared, *targets))
        # autocast's weight cache must be off while capturing (its casts would be captured once and go stale)
        with _autocast(autocast, cache_enabled=False):
            graphed = torch.cuda.make_graphed_callables(step, sample, allow_unused_input=True)
        self.captures += 1
        assert isinstance(graphed, nn.Module)  # a Module in, a Module out
        return graphed


def _autocast(enabled: bool, cache_enabled: bool = True) -> torch.autocast:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled, cache_enabled=cache_enabled)
