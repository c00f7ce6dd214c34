"""The (φ, θ, r) search grid shared by the spectra, the peak search and the SOMP dictionary
(SCIENCE.md, "Estimators and evaluation").

Owns SearchGrid, its field-of-view axes (fov_axes) and the spectra's peaks (Peaks); the estimators' result
type SourceEstimate lives in ris_model.estimators.result and is re-exported here. Steering comes only from
`ris_model.physics.steering` (ARCHITECTURE.md, "The data contract"). Imports torch, api_schemas and ris_model.physics;
nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from api_schemas import SystemConfig
from ris_model.estimators.result import SourceEstimate
from ris_model.physics import steering

__all__ = ["Peaks", "SearchGrid", "SourceEstimate", "fov_axes"]


@dataclass(frozen=True)
class SearchGrid:
    """A regular grid in azimuth × elevation × inverse range, with its steering vectors precomputed.

    Ranges are spaced uniformly in 1/r, because the near-field phase curvature (and so the resolution of an
    array in range) is linear in 1/r. The flat index of grid point (i_az, i_el, i_r) is
    g = (i_az·G_el + i_el)·G_r + i_r, the order of `spectrum.reshape(B, G_az, G_el, G_r)`.

    Attributes:
        system: the RIS geometry the steering was computed for.
        azimuth: float64 [G_az], radians, ascending.
        elevation: float64 [G_el], radians, ascending.
        range_m: float64 [G_r], meters, ascending (uniform in 1/r).
        steering: complex [G, N] (G = G_az·G_el·G_r), unit-norm columns a(φ, θ, r) of `physics.steering`.
    """

    system: SystemConfig
    azimuth: Tensor
    elevation: Tensor
    range_m: Tensor
    steering: Tensor

    @classmethod
    def uniform(cls, system: SystemConfig, n_azimuth: int = 24, n_elevation: int = 12, n_range: int = 6, *,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.complex64) -> SearchGrid:
        """A grid spanning the system's field of view, end points included.

        Args:
            system: FOV (azimuth_max_deg, elevation_max_deg, range_min_m, range_max_m) and geometry.
            n_azimuth, n_elevation, n_range: points per axis (≥ 1; one point sits at the FOV centre).
            device: where the steering matrix lives.
            dtype: complex64 or complex128 for `steering`.

        Raises:
            ValueError: a count below 1.
        """
        azimuth, elevation, inv_r = fov_axes(system, n_azimuth, n_elevation, n_range, device=device)
        range_m = (1 / inv_r).flip(0)
        az, el, rng = torch.meshgrid(azimuth, elevation, range_m, indexing="ij")  # [G_az, G_el, G_r]
        a = steering(system, az.reshape(-1), el.reshape(-1), rng.reshape(-1)).to(dtype)  # [G, N]
        return cls(system=system, azimuth=azimuth, elevation=elevation, range_m=range_m, steering=a)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(G_az, G_el, G_r)."""
        return (self.azimuth.numel(), self.elevation.numel(), self.range_m.numel())

    @property
    def size(self) -> int:
        """G, the number of grid points."""
        return self.steering.shape[0]

    def steps(self) -> tuple[float, float, float]:
        """Grid steps (Δφ rad, Δθ rad, Δ(1/r) in 1/m); an axis with one point reports 0.1 (rad or 1/m), so
        that local refinement still has a scale."""
        inv_r = 1 / self.range_m
        return (_step(self.azimuth, 0.1), _step(self.elevation, 0.1), _step(inv_r, 0.1))

    def points(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(azimuth rad, elevation rad, range m), float64 shaped like `index` (int64 flat grid indices)."""
        G_az, G_el, G_r = self.shape
        i_az = torch.div(index, G_el * G_r, rounding_mode="floor")
        i_el = torch.div(index, G_r, rounding_mode="floor") % G_el
        i_r = index % G_r
        return self.azimuth[i_az], self.elevation[i_el], self.range_m[i_r]


@dataclass(frozen=True)
class Peaks:
    """The k best local maxima of a spectrum per scene, best first.

    index: int64 [B, k] flat grid index (meaningless where not valid); value: real [B, k] spectrum value;
    azimuth, elevation: float64 [B, k] radians; range_m: float64 [B, k] meters; valid: bool [B, k] — False
    where the scene asked for fewer peaks or has fewer than k local maxima.
    """

    index: Tensor
    value: Tensor
    azimuth: Tensor
    elevation: Tensor
    range_m: Tensor
    valid: Tensor


def fov_axes(system: SystemConfig, n_azimuth: int, n_elevation: int, n_range: int, *,
             device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The axes of a search grid over the system's field of view: azimuth and elevation in radians and inverse
    range in 1/m, each float64, ascending, end points included (one point sits at the centre).

    Raises:
        ValueError: a count below 1.
    """
    if min(n_azimuth, n_elevation, n_range) < 1:
        raise ValueError(f"grid sizes must be >= 1, got {(n_azimuth, n_elevation, n_range)}")
    az_max, el_max = math.radians(system.azimuth_max_deg), math.radians(system.elevation_max_deg)
    return (_span(-az_max, az_max, n_azimuth, device), _span(-el_max, el_max, n_elevation, device),
            _span(1 / system.range_max_m, 1 / system.range_min_m, n_range, device))


def _span(lo: float, hi: float, n: int, device: torch.device | str | None) -> Tensor:
    if n == 1:
        return torch.tensor([(lo + hi) / 2], dtype=torch.float64, device=device)
    return torch.linspace(lo, hi, n, dtype=torch.float64, device=device)


def _step(values: Tensor, fallback: float) -> float:
    if values.numel() > 1:
        return float((values.max() - values.min()) / (values.numel() - 1))
    return fallback
