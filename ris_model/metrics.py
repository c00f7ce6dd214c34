"""Evaluation metrics of counting and localization (SCIENCE.md, "The trainer", "Estimators and evaluation").

Owns K accuracy / under / over counts, the K confusion matrix and matched per-source errors. Angles come in
radians and leave in degrees only through the `_deg` names (reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CountingTally:
    """Running sums for K accuracy / under / over and the confusion matrix of source counts.

    `confusion[t - k_min][p - k_min]` counts true t, estimated p, for true counts in k_min..k_max. Estimates
    share that range unless `overflow`: then column k_max + 1 collects every estimate above k_max (counting
    rules like MDL can return up to n − 1), and estimates below k_min land in the first column."""

    k_max: int
    k_min: int = 1
    overflow: bool = False
    n: int = 0
    correct: int = 0
    under: int = 0
    over: int = 0
    confusion: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.confusion:
            self.confusion = [[0] * self._n_cols for _ in range(self.k_max - self.k_min + 1)]

    @property
    def _n_cols(self) -> int:
        return self.k_max - self.k_min + 1 + int(self.overflow)

    def update(self, k_true: Tensor, k_pred: Tensor) -> None:
        """k_true, k_pred: int64 [B] (the same indexing on both sides)."""
        self.n += int(k_true.numel())
        self.correct += int((k_pred == k_true).sum())
        self.under += int((k_pred < k_true).sum())
        self.over += int((k_pred > k_true).sum())
        cols = self._n_cols
        col = k_pred.clamp(self.k_min, self.k_max + 1) if self.overflow else k_pred
        idx = (k_true - self.k_min) * cols + (col - self.k_min)
        counts = torch.bincount(idx.cpu(), minlength=len(self.confusion) * cols).tolist()
        for i, c in enumerate(counts):
            self.confusion[i // cols][i % cols] += c

    def rates(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"k_acc": self.correct / n, "k_under": self.under / n, "k_over": self.over / n}


@dataclass
class GeometryTally:
    """Squared-error sums over matched true sources (azimuth/elevation in radians, range in meters)."""

    n_sources: int = 0
    sq_azimuth: float = 0.0
    sq_elevation: float = 0.0
    sq_range: float = 0.0

    def update(self, d_azimuth: Tensor, d_elevation: Tensor, d_range_m: Tensor, mask: Tensor) -> None:
        m = mask.float()
        self.n_sources += int(m.sum())
        self.sq_azimuth += float((d_azimuth.square() * m).sum())
        self.sq_elevation += float((d_elevation.square() * m).sum())
        self.sq_range += float((d_range_m.square() * m).sum())

    def rmse(self) -> dict[str, float]:
        n = max(self.n_sources, 1)
        return {
            "rmse_azimuth_deg": math.degrees(math.sqrt(self.sq_azimuth / n)),
            "rmse_elevation_deg": math.degrees(math.sqrt(self.sq_elevation / n)),
            "rmse_range_m": math.sqrt(self.sq_range / n),
        }
