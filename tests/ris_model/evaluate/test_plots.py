"""The training run's figures (ris_model.evaluate.plots.render_training_plots) from metric points."""

from __future__ import annotations

import io

from PIL import Image

from api_schemas import MetricPoint
from ris_model.evaluate.plots import render_training_plots


def _run_points() -> list[MetricPoint]:
    """Two phases of two epochs, 3 steps each: per-step loss and terms, per-epoch losses and K accuracies."""
    points: list[MetricPoint] = []
    step = 0
    for phase in ("geom", "k_only"):
        for epoch in (1, 2):
            for _ in range(3):
                step += 1
                for key, value in (("train/loss", 5.0 / step), ("train/loss_cov", 1.0 / step), ("train/lr", 1e-3)):
                    points.append(MetricPoint(phase=phase, epoch=epoch, step=step, key=key, value=value))
            for key, value in (("train/epoch_loss", 4.0 / step), ("val/loss", 4.5 / step), ("train/k_acc", 0.1 * step),
                               ("val/k_acc", 0.08 * step), ("val/k_acc_snr_ge10", 0.09 * step)):
                points.append(MetricPoint(phase=phase, epoch=epoch, step=step, key=key, value=min(value, 1.0)))
    return points


def test_loss_curves_and_k_accuracy_per_epoch_are_pngs() -> None:
    figures = render_training_plots(_run_points())
    assert set(figures) == {"loss_curves.png", "k_acc_per_epoch.png"}
    for name, data in figures.items():
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.width > 400 and image.height > 200, name


def test_a_run_without_epoch_metrics_has_only_what_it_logged() -> None:
    steps_only = [MetricPoint(phase="k_only", epoch=1, step=s, key="train/loss", value=1.0) for s in (1, 2)]
    assert set(render_training_plots(steps_only)) == {"loss_curves.png"}
    assert render_training_plots([]) == {}
    lr_only = [MetricPoint(phase="k_only", epoch=1, step=1, key="train/lr", value=1e-3)]
    assert render_training_plots(lr_only) == {}
