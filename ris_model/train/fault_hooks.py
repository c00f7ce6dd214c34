"""Fault injection from a job's `debug` section (api_schemas.DebugConfig), as StepHooks.

NaN in one loss term for a range of steps, a sleep after every step, cancel requests ignored, a simulated
out-of-memory error at one step. Callers build these hooks only for a config that has a `debug` section:
the worker for such a job, the command line for such a config file (its tests abort a run on purpose).
"""

from __future__ import annotations

import time

import torch

from api_schemas import DebugConfig, LossWeights
from ris_model.losses import TERMS, LossResult, weighted_total
from ris_model.model.network import ModelOutput
from ris_model.scenes import SceneBatch
from ris_model.train.hooks import NoHooks


class DebugHooks(NoHooks):
    def __init__(self, debug: DebugConfig) -> None:
        """Raises ValueError: `nan_loss_term` names no loss term."""
        if debug.nan_loss_term is not None and debug.nan_loss_term not in TERMS:
            raise ValueError(f"debug.nan_loss_term must be one of {TERMS}, got {debug.nan_loss_term!r}")
        self.debug = debug

    def nan_term(self, step: int) -> str | None:
        """The loss term made NaN at `step`, if any."""
        d = self.debug
        if d.nan_loss_term is not None and step >= d.nan_from_step:
            if d.nan_n_steps == 0 or step < d.nan_from_step + d.nan_n_steps:
                return d.nan_loss_term
        return None

    def polls_stop(self) -> bool:
        return not self.debug.ignore_cancel

    def before_step(self, step: int) -> None:
        if self.debug.oom_at_step == step:  # an out-of-memory error without allocating a huge tensor
            raise torch.OutOfMemoryError(f"debug.oom_at_step: simulated out-of-memory at step {step}")

    def runs_eagerly(self, step: int) -> bool:
        return self.nan_term(step) is not None

    def loss(self, res: LossResult, out: ModelOutput, batch: SceneBatch, weights: LossWeights,
             step: int) -> LossResult:
        term = self.nan_term(step)
        if term is None:
            return res
        terms = {**res.terms, term: res.terms[term] * float("nan")}
        return LossResult(total=weighted_total(terms, weights, res.total.device), terms=terms,
                          assignment=res.assignment)

    def after_step(self, step: int) -> None:
        if self.debug.sleep_per_step_s:
            time.sleep(self.debug.sleep_per_step_s)
