"""The result type every estimator returns: SourceEstimate (SCIENCE.md, "Estimators and evaluation").

Imports torch only. Also importable as `ris_model.estimators.SourceEstimate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class SourceEstimate:
    """Estimated sources of B scenes, as every estimator here returns them, whatever its options.

    k: int64 [B] estimated number of sources; azimuth, elevation: float64 [B, S] radians; range_m: float64
    [B, S] meters; valid: bool [B, S], True for the first k[b] slots of scene b (S ≥ max k);
    spectrum: real [B, G] on the search grid, or None when the estimator does not make one;
    k_log_prob: float64 [B, K_max], log-probabilities of K = 1..K_max, or None when the estimator has no
    posterior over the count (the network's K-head has one).
    """

    k: Tensor
    azimuth: Tensor
    elevation: Tensor
    range_m: Tensor
    valid: Tensor
    spectrum: Tensor | None = None
    k_log_prob: Tensor | None = None

    #: the per-scene fields every estimate has (the spectrum and the count posterior are optional)
    FIELDS: ClassVar[tuple[str, ...]] = ("k", "azimuth", "elevation", "range_m", "valid")

    def map(self, fn: Callable[[Tensor], Tensor]) -> SourceEstimate:
        """fn applied to each of FIELDS and to k_log_prob (e.g. `lambda t: t[rows]`, `Tensor.cpu`); the
        spectrum is dropped."""
        prior = None if self.k_log_prob is None else fn(self.k_log_prob)
        return SourceEstimate(**{f: fn(getattr(self, f)) for f in self.FIELDS}, k_log_prob=prior)

    @staticmethod
    def cat(parts: Sequence[SourceEstimate]) -> SourceEstimate:
        """The scenes of `parts` (at least one, same slot count S), in order; spectra are dropped, and the
        count posterior is kept where every part has one."""
        priors = [p.k_log_prob for p in parts]
        present = [t for t in priors if t is not None]
        prior = torch.cat(present) if len(present) == len(priors) else None
        return SourceEstimate(**{f: torch.cat([getattr(p, f) for p in parts]) for f in SourceEstimate.FIELDS},
                              k_log_prob=prior)
