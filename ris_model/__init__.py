"""The science of ris-jobs: physics, scenes, network, losses, estimators, trainer, diagnostics, evaluation.

Public API (SCIENCE.md, "Estimators and evaluation"): `ris_model.load_estimator(checkpoint_path, device=None)` and
`ris_model.physics.steering`. Importing this package is cheap and imports no torch: `load_estimator` is
resolved on first use (PEP 562), so the worker's prefork parent can import `ris_model.errors` without CUDA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ris_model.inference import Estimator, load_estimator

__all__ = ["Estimator", "load_estimator"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ris_model import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'ris_model' has no attribute {name!r}")
