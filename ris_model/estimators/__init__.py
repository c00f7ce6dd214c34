"""Classical estimators and evaluation for RIS near-field localization (SCIENCE.md, "Estimators and evaluation").

Spectra (MUSIC, MVDR) from a covariance or its low-rank factor, 3D peak search and refinement; MDL/AIC source
counting on the compressed data and on an oracle uncompressed array; simultaneous OMP on the compressed
measurements; Hungarian-matched evaluation; the numerical stochastic CRB of the compressed model.
Angles are radians and ranges meters throughout; degrees appear only in `_deg` names.
"""

from ris_model.estimators.counting import (
    aic,
    count_sources,
    mdl,
    measurement_counts,
    oracle_array_counts,
    sample_eigenvalues,
    simulate_array_snapshots,
)
from ris_model.estimators.crb import CRBResult, crb_compressed, steering_jacobian
from ris_model.estimators.grid import Peaks, SearchGrid
from ris_model.estimators.matching import (
    CountingReport,
    EvaluationReport,
    Matching,
    Tolerances,
    counting_metrics,
    evaluate_sources,
    match_sources,
)
from ris_model.estimators.omp import SompResult, somp
from ris_model.estimators.result import SourceEstimate
from ris_model.estimators.spectra import SpectralEstimator, find_peaks, music_spectrum, mvdr_spectrum, refine_peaks

__all__ = [
    "CRBResult",
    "CountingReport",
    "EvaluationReport",
    "Matching",
    "Peaks",
    "SearchGrid",
    "SompResult",
    "SourceEstimate",
    "SpectralEstimator",
    "Tolerances",
    "aic",
    "count_sources",
    "counting_metrics",
    "crb_compressed",
    "evaluate_sources",
    "find_peaks",
    "match_sources",
    "mdl",
    "measurement_counts",
    "music_spectrum",
    "mvdr_spectrum",
    "oracle_array_counts",
    "refine_peaks",
    "sample_eigenvalues",
    "simulate_array_snapshots",
    "somp",
    "steering_jacobian",
]
