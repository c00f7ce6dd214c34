"""One call that runs a training or diagnostic job end to end (the seam the worker uses; docs/CONTRACTS.md).

Owns run_training_job. Imports no Celery, HTTP, SQL or Redis: the caller passes a MetricSink.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from api_schemas import DiagnosticJobConfig, TrainingJobConfig
from ris_model.faults import Faults
from ris_model.network import RisNet
from ris_model.sinks import MetricSink
from ris_model.trainer import FitResult, StopReason, Trainer, never_stop

__all__ = ["FitResult", "StopReason", "pick_device", "run_training_job"]


def pick_device(device: str | None) -> torch.device:
    """`device` as given, or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_training_job(config: TrainingJobConfig, *, sink: MetricSink, checkpoint_dir: Path,
                     device: str | None = None, resume_from: Path | None = None,
                     should_stop: Callable[[], StopReason | None] = never_stop,
                     checkpoint_interval_s: float | None = None, faults: Faults | None = None) -> FitResult:
    """Build the model, run every phase through the Trainer, and return the result.

    A DiagnosticJobConfig also gets its verdict in `FitResult.report`. The sink is not closed here.
    """
    dev = pick_device(device)
    torch.manual_seed(config.data.seed)
    model = RisNet(config.system, config.model)
    kind = "diagnostic" if isinstance(config, DiagnosticJobConfig) else "training"
    trainer = Trainer(config, model, sink, dev, checkpoint_dir=checkpoint_dir,
                      checkpoint_interval_s=checkpoint_interval_s, kind=kind, faults=faults)
    return trainer.fit(should_stop, resume_from=resume_from)
