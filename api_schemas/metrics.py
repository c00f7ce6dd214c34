"""The one metric type that crosses every hop, trainer → sink → store → HTTP (ARCHITECTURE.md, "The life of a metric"),
and its keys.

Keys are `<split>/<name>[_<unit>]` and are declared here once, so a search finds producer and readers.
Non-finite skipped steps travel as metric points too: each skipped step emits value-1 points under
`nonfinite/cause/<cause>`, `nonfinite/term/<loss term>` and `nonfinite/group/<param group>`, all with the
same (phase, epoch, step); `fold_nonfinite` turns them into a NonfiniteSummary.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from api_schemas.jobs import NonfiniteEvent, NonfiniteSummary


class MetricPoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: str
    epoch: int = Field(ge=0)
    step: int = Field(ge=0, description="global optimizer step within the job")
    key: str = Field(max_length=128)
    value: float


class StoredMetricPoint(MetricPoint):
    """A metric point as the store returns it: with its per-job sequence number and time."""

    seq: int
    ts: datetime


class MetricsPage(BaseModel):
    points: list[StoredMetricPoint]
    next_since_seq: int | None = None


# per step (sampled every log_every_steps)
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_LOSS_TERM_PREFIX = "train/loss_"  # + term name: train/loss_cov, train/loss_k, ...
PROGRESS_FRACTION = "progress/fraction"
# per epoch
TRAIN_EPOCH_LOSS = "train/epoch_loss"
TRAIN_K_ACC = "train/k_acc"
TRAIN_NONFINITE_SKIPPED = "train/nonfinite_skipped"
TRAIN_OPTIMIZER_STEPS = "train/optimizer_steps"
TRAIN_BATCHES = "train/batches"
TRAIN_SAMPLES_PER_S = "train/samples_per_s"
TRAIN_DELTA_PARAM = "train/delta_param_l2"
TRAIN_DELTA_PARAM_GROUP_PREFIX = "train/delta_param_l2_"  # + group name
VAL_LOSS = "val/loss"
VAL_K_ACC = "val/k_acc"
VAL_K_UNDER = "val/k_under"
VAL_K_OVER = "val/k_over"
VAL_RMSE_AZIMUTH_DEG = "val/rmse_azimuth_deg"
VAL_RMSE_ELEVATION_DEG = "val/rmse_elevation_deg"
VAL_RMSE_RANGE_M = "val/rmse_range_m"
VAL_COV_NMSE = "val/cov_nmse"
#: SNR bins of the validation breakdown (dB, [lo, hi)); key suffixes name them
SNR_BINS_DB: tuple[tuple[float, float, str], ...] = (
    (float("-inf"), 0.0, "snr_lt0"), (0.0, 10.0, "snr_0_10"), (10.0, float("inf"), "snr_ge10"))
VAL_K_ACC_BIN_PREFIX = "val/k_acc_"  # + bin suffix: val/k_acc_snr_ge10
VAL_RMSE_BIN_KEYS = ("val/rmse_azimuth_deg_", "val/rmse_elevation_deg_", "val/rmse_range_m_")  # + bin suffix
# a sweep's own points (step = trials ended so far)
SWEEP_TRIALS_ENDED = "sweep/trials_ended"
SWEEP_BEST_VALUE = "sweep/best_value"
# non-finite events (value 1 per skipped step)
NONFINITE_PREFIX = "nonfinite/"
NONFINITE_CAUSE_PREFIX = "nonfinite/cause/"
NONFINITE_TERM_PREFIX = "nonfinite/term/"
NONFINITE_GROUP_PREFIX = "nonfinite/group/"
#: causes of a skipped step (SCIENCE.md, "The trainer")
NONFINITE_CAUSES = ("loss", "grad", "amp_overflow")


def fold_nonfinite(summary: NonfiniteSummary, points: Iterable[MetricPoint]) -> NonfiniteSummary:
    """Add the non-finite event points in `points` to `summary` and return the new summary."""
    s = summary.model_copy(deep=True)
    events: dict[tuple[str, int, int], NonfiniteEvent] = {}
    for p in points:
        if not p.key.startswith(NONFINITE_PREFIX):
            continue
        where = (p.phase, p.epoch, p.step)
        ev = events.setdefault(where, NonfiniteEvent(phase=p.phase, epoch=p.epoch, step=p.step, cause=""))
        name = p.key.rsplit("/", 1)[-1]
        if p.key.startswith(NONFINITE_CAUSE_PREFIX):
            ev.cause = name
            s.total += 1
            s.by_phase[p.phase] = s.by_phase.get(p.phase, 0) + 1
            s.by_cause[name] = s.by_cause.get(name, 0) + 1
        elif p.key.startswith(NONFINITE_TERM_PREFIX):
            ev.loss_terms.append(name)
            s.by_loss_term[name] = s.by_loss_term.get(name, 0) + 1
        elif p.key.startswith(NONFINITE_GROUP_PREFIX):
            ev.param_groups.append(name)
            s.by_param_group[name] = s.by_param_group.get(name, 0) + 1
    if events:
        s.last = max(events.values(), key=lambda e: e.step)
    return s
