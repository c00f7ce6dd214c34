"""Figures as PNG bytes: the evaluation report's (K accuracy vs SNR, matched-pair RMSE vs SNR with the median
√CRB, the model's K confusion matrix) and a training or diagnostic run's (loss curves, K accuracy per epoch,
from its metric points). Imports matplotlib (Agg, headless) only when called; one PNG writer (`_png`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from typing import Any

from api_schemas import MetricPoint
from api_schemas.evaluation import EvaluationReport
from api_schemas.metrics import (
    TRAIN_EPOCH_LOSS,
    TRAIN_K_ACC,
    TRAIN_LOSS,
    TRAIN_LOSS_TERM_PREFIX,
    VAL_K_ACC,
    VAL_K_ACC_BIN_PREFIX,
    VAL_LOSS,
)


def render_plots(report: EvaluationReport) -> dict[str, bytes]:
    """The report's figures as PNG bytes by file name: K_acc vs SNR, RMSE vs SNR (with √CRB), K confusion."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never open a display
    from matplotlib import pyplot as plt

    rows = [t for t in report.by_snr if t.lo is not None and t.hi is not None]
    x = [(t.lo + t.hi) / 2 for t in rows]  # type: ignore[operator]
    figures = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(report.methods):
        ax.plot(x, [_nan(t.methods[i].k_acc) for t in rows], marker="o", label=name)
    ax.set(xlabel="SNR (dB, bin centre)", ylabel="K accuracy", ylim=(0, 1.02), title="Source-count accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures["k_acc_vs_snr.png"] = _png(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("rmse_azimuth_deg", "azimuth_deg", "RMSE φ (deg)"), ("rmse_elevation_deg", "elevation_deg",
              "RMSE θ (deg)"), ("rmse_range_m", "range_m", "RMSE r (m)"))
    for ax, (field, crb_field, label) in zip(axes, panels, strict=True):
        for i, name in enumerate(report.methods):
            values = [getattr(t.methods[i], field) for t in rows]
            if any(v is not None for v in values):
                ax.plot(x, [_nan(v) for v in values], marker="o", label=name)
        if all(t.crb is not None for t in rows):
            ax.plot(x, [_nan(getattr(t.crb, crb_field)) for t in rows], "k--", label="median √CRB")
        ax.set(xlabel="SNR (dB, bin centre)", ylabel=label, yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Matched-pair RMSE vs SNR")
    figures["rmse_vs_snr.png"] = _png(fig)

    cm = report.k_confusion
    fig, ax = plt.subplots(figsize=(5, 4))
    image = ax.imshow(cm.counts, cmap="Blues")
    ax.set(xticks=range(len(cm.predicted_k)), xticklabels=cm.predicted_k, yticks=range(len(cm.true_k)),
           yticklabels=[str(k) for k in cm.true_k], xlabel="estimated K", ylabel="true K",
           title="K confusion (model)")
    for i, row in enumerate(cm.counts):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax)
    figures["k_confusion.png"] = _png(fig)
    return figures


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _png(fig: object) -> bytes:
    from matplotlib import pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- training runs

#: The per-epoch keys of the K-accuracy figure, drawn solid; the validation SNR bins are drawn dashed.
_K_ACC_KEYS = (TRAIN_K_ACC, VAL_K_ACC)


def _epoch_axis(points: list[MetricPoint]) -> tuple[dict[tuple[str, int], int], list[tuple[int, str]]]:
    """A running epoch number across phases (the trainer counts epochs per phase), in the order the run went,
    and where each phase starts on it."""
    index: dict[tuple[str, int], int] = {}
    starts: list[tuple[int, str]] = []
    for p in points:
        if p.epoch < 1 or (p.phase, p.epoch) in index:
            continue
        if not starts or starts[-1][1] != p.phase:
            starts.append((len(index) + 1, p.phase))
        index[(p.phase, p.epoch)] = len(index) + 1
    return index, starts


def _series(points: list[MetricPoint], key: str, x_of: Callable[[MetricPoint], int | None]
            ) -> tuple[list[int], list[float]]:
    """One key's points as x and y lists; a point logged again at the same x (a resumed run) replaces the first."""
    values: dict[int, float] = {}
    for p in points:
        x = x_of(p) if p.key == key else None
        if x is not None:
            values[x] = p.value
    xs = sorted(values)
    return xs, [values[x] for x in xs]


def render_training_plots(points: Iterable[MetricPoint]) -> dict[str, bytes]:
    """A training or diagnostic run's figures as PNG bytes by file name, from its metric points (seq order):

    - `loss_curves.png`: the training loss and each loss term per optimizer step, beside the epoch loss and
      the validation loss per epoch;
    - `k_acc_per_epoch.png`: the training and validation K accuracy per epoch (the validation SNR bins dashed).

    Epochs are numbered across phases, with each phase's start marked. A figure whose keys the run never
    logged is left out, so a run stopped before its first epoch has none.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never open a display
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pts = list(points)
    epoch_of, phase_starts = _epoch_axis(pts)

    def by_epoch(p: MetricPoint) -> int | None:
        return epoch_of.get((p.phase, p.epoch))

    def mark_phases(ax: Any) -> None:
        """Whole epochs on the x axis, and a dotted line where each phase starts."""
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for x, phase in phase_starts:
            ax.axvline(x - 0.5, color="0.6", linestyle=":", linewidth=1)
            ax.annotate(phase, (x - 0.45, 1.0), xycoords=("data", "axes fraction"), va="top", fontsize=7,
                        color="0.35")

    keys = {p.key for p in pts}
    figures: dict[str, bytes] = {}
    step_keys = [TRAIN_LOSS] * (TRAIN_LOSS in keys) + sorted(k for k in keys if k.startswith(TRAIN_LOSS_TERM_PREFIX))
    epoch_keys = [k for k in (TRAIN_EPOCH_LOSS, VAL_LOSS) if k in keys]
    if step_keys or epoch_keys:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
        for key in step_keys:
            xs, ys = _series(pts, key, lambda p: p.step)
            left.plot(xs, ys, label=key.removeprefix("train/"), linewidth=1.6 if key == TRAIN_LOSS else 1.0)
        left.set(xlabel="optimizer step", ylabel="loss", title="Training loss and its terms")
        for key in epoch_keys:
            xs, ys = _series(pts, key, by_epoch)
            right.plot(xs, ys, marker="o", label=key)
        right.set(xlabel="epoch (all phases)", ylabel="loss", title="Loss per epoch")
        mark_phases(right)
        for ax in (left, right):
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
        figures["loss_curves.png"] = _png(fig)

    bins = sorted(k for k in keys if k.startswith(VAL_K_ACC_BIN_PREFIX))
    if any(k in keys for k in _K_ACC_KEYS):
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in (*[k for k in _K_ACC_KEYS if k in keys], *bins):
            xs, ys = _series(pts, key, by_epoch)
            dashed = key in bins
            ax.plot(xs, ys, marker="." if dashed else "o", linestyle="--" if dashed else "-",
                    linewidth=0.9 if dashed else 1.6, label=key)
        ax.set(xlabel="epoch (all phases)", ylabel="K accuracy", ylim=(0, 1.02),
               title="Source-count accuracy per epoch")
        mark_phases(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        figures["k_acc_per_epoch.png"] = _png(fig)
    return figures
