"""Evaluation metrics of counting and localization (DESIGN §2.6, §2.7).

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
    """Running sums for K accuracy and the confusion matrix; `confusion[t-1][p-1]` counts true t, predicted p."""

    k_max: int
    n: int = 0
    correct: int = 0
    under: int = 0
    over: int = 0
    confusion: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.confusion:
            self.confusion = [[0] * self.k_max for _ in range(self.k_max)]

    def update(self, k_true: Tensor, k_pred: Tensor) -> None:
        """k_true, k_pred: int64 [B] in 1..K_MAX (the same indexing on both sides)."""
        self.n += int(k_true.numel())
        self.correct += int((k_pred == k_true).sum())
        self.under += int((k_pred < k_true).sum())
        self.over += int((k_pred > k_true).sum())
        idx = (k_true - 1) * self.k_max + (k_pred - 1)
        counts = torch.bincount(idx.cpu(), minlength=self.k_max**2).tolist()
        for i, c in enumerate(counts):
            self.confusion[i // self.k_max][i % self.k_max] += c

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
