"""Builders and fixtures of the ris_model tests: tiny CPU configs, seeded generators, small models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from api_schemas import DataConfig, LossWeights, ModelConfig, PhaseConfig, SystemConfig, TrainingJobConfig
from ris_model.model.network import RisNet

#: A joint phase with every loss weight > 0 (every parameter must get a gradient; SCIENCE.md, "The network").
ALL_TERMS = LossWeights(lam_cov=1.0, lam_k=1.0, lam_aux=1.0, lam_gap=0.1, lam_margin=0.1)


def tiny_system(**overrides: Any) -> SystemConfig:
    """4×4 RIS, 4 BS antennas, 4 snapshots, K_MAX = 3."""
    fields: dict[str, Any] = dict(n_ris_h=4, n_ris_v=4, n_bs_antennas=4, n_snapshots=4, k_max=3)
    return SystemConfig(**{**fields, **overrides})


def tiny_phase(name: str = "joint", **overrides: Any) -> PhaseConfig:
    """One CPU epoch, AMP off, every loss term on unless overridden."""
    fields: dict[str, Any] = dict(name=name, epochs=1, amp=False, loss_weights=ALL_TERMS)
    return PhaseConfig(**{**fields, **overrides})


def tiny_config(*, phases: tuple[PhaseConfig, ...] | None = None, system: SystemConfig | None = None,
                architecture: str = "unrolled_omp", log_every_steps: int = 1, **overrides: Any) -> TrainingJobConfig:
    """A TrainingJobConfig that trains in about a second on a CPU: n_train 64, n_val 32, batch 16
    (4 batches per epoch), d_model 16, one layer, two heads. `overrides` go to TrainingJobConfig (data, debug)."""
    fields: dict[str, Any] = dict(
        system=system or tiny_system(),
        model=ModelConfig(architecture=architecture, d_model=16, n_layers=1, n_heads=2),
        data=DataConfig(n_train=64, n_val=32, batch_size=16),
        phases=phases or (tiny_phase(),),
        log_every_steps=log_every_steps,
    )
    return TrainingJobConfig(**{**fields, **overrides})


def make_model(config: TrainingJobConfig, seed: int = 0) -> RisNet:
    """A RisNet initialised from `seed` without touching the global RNG of other tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RisNet(config.system, config.model)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _isolated_global_rng() -> Iterator[None]:
    """The trainer uses the global RNG (dropout, RNG state in checkpoints): keep tests independent of order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `final` checkpoint of one tiny_config() CPU training run (about 2 s), shared by the inference and
    evaluation tests."""
    from ris_model.train.jobs import run_training_job
    from ris_model.train.sinks import NullSink

    out = tmp_path_factory.mktemp("trained")
    with torch.random.fork_rng(devices=[]):
        result = run_training_job(tiny_config(), sink=NullSink(), checkpoint_dir=out, device="cpu")
    assert result.final_checkpoint is not None
    return Path(result.final_checkpoint.path)
