"""Job configs for worker, integration and fault tests: tests/factories.tiny_config() with the diagnostic's
post-training checks shrunk, so that a whole job takes about a second on a CPU."""

from __future__ import annotations

from typing import Any

from api_schemas import TrainingJobConfig
from tests.factories import tiny_config

#: The smallest budgets DiagnosticChecksConfig allows (the overfit probe off).
QUICK_CHECKS = {"overfit_scenes": 8, "overfit_steps": 0, "identifiability_scenes": 50, "leakage_train_batches": 1}


def quick_diagnostic_config(**debug: Any) -> dict[str, Any]:
    """tiny_config() (one k_only epoch, 64 train scenes) with the cheapest checks and optional debug knobs."""
    config = tiny_config()
    config["checks"] = dict(QUICK_CHECKS)
    if debug:
        config["debug"] = {**config.get("debug", {}), **debug}
    return config


def two_phase_training_config() -> dict[str, Any]:
    """tiny_config() as a training job with two phases: geom (K head frozen), then k_only."""
    config = {k: v for k, v in tiny_config().items() if k in TrainingJobConfig.model_fields}
    k_only = config["phases"][0]
    geom = {**k_only, "name": "geom", "frozen_groups": ["k_head"],
            "loss_weights": {"lam_cov": 1.0, "lam_K": 0.0, "lam_aux": 1.0}}
    config["phases"] = [geom, k_only]
    return config


def tiny_training_config(*, epochs: int = 4, **debug: Any) -> dict[str, Any]:
    """tiny_config() as a one-phase training job of `epochs` epochs (4 steps each), optional debug knobs."""
    config = {k: v for k, v in tiny_config().items() if k in TrainingJobConfig.model_fields}
    config["phases"][0]["epochs"] = epochs
    if debug:
        config["debug"] = {**config.get("debug", {}), **debug}
    return config
