"""The evaluation report's figures: K accuracy vs SNR, matched-pair RMSE vs SNR (with the median √CRB) and
the model's K confusion matrix, as PNG bytes. Imports matplotlib (Agg, headless) only when called.
"""

from __future__ import annotations

import io
import math

from api_schemas.evaluation import EvaluationReport


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
