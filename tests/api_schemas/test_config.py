"""api_schemas.config: bounds, unknown fields, cross-field checks and the seed's diagnostic defaults."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api_schemas import DiagnosticJobConfig, LossWeights, ModelConfig, PhaseConfig, SystemConfig, TrainingJobConfig
from api_schemas.config import PARAM_GROUPS


def _error(data: dict[str, Any], model: type = TrainingJobConfig) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value


def _locs(exc: ValidationError) -> list[str]:
    return [".".join(str(part) for part in e["loc"]) for e in exc.errors()]


@pytest.mark.parametrize(("data", "loc"), [
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"data": {"batch_size": 10**6}}, "data.batch_size"),
    ({"data": {"n_val": -1}}, "data.n_val"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 0.0}]}, "phases.0.lr"),
    ({"phases": [{"name": "a", "epochs": 1, "lr": 2.0}]}, "phases.0.lr"),
    ({"phases": [{"name": "a", "epochs": 0}]}, "phases.0.epochs"),
    ({"phases": [{"name": "Bad Name", "epochs": 1}]}, "phases.0.name"),
    ({"phases": [{"name": "a", "epochs": 1, "loss_weights": {"lam_k": -1.0}}]}, "phases.0.loss_weights.lam_k"),
    ({"system": {"n_ris_h": 1}}, "system.n_ris_h"),
    ({"system": {"k_max": 9}}, "system.k_max"),
    ({"model": {"d_model": 4}}, "model.d_model"),
    ({"log_every_steps": 0}, "log_every_steps"),
])
def test_out_of_range_value_is_rejected_naming_the_field(data: dict[str, Any], loc: str) -> None:
    exc = _error(data)
    assert loc in _locs(exc)
    assert loc in str(exc), "the message names the field"


@pytest.mark.parametrize(("data", "loc"), [
    ({"bogus": 1}, "bogus"),
    ({"data": {"batchsize": 64}}, "data.batchsize"),
    ({"system": {"n_ris": 144}}, "system.n_ris"),
    ({"phases": [{"name": "a", "epochs": 1, "learning_rate": 0.1}]}, "phases.0.learning_rate"),
])
def test_unknown_field_is_rejected_naming_the_field(data: dict[str, Any], loc: str) -> None:
    exc = _error(data)
    assert loc in _locs(exc)
    assert exc.errors()[0]["type"] == "extra_forbidden"


def test_range_min_above_range_max_is_rejected() -> None:
    exc = _error({"system": {"range_min_m": 5.0, "range_max_m": 2.0}})
    assert "range_min_m" in str(exc) and "range_max_m" in str(exc)


def test_d_model_not_multiple_of_n_heads_is_rejected() -> None:
    exc = _error({"d_model": 30, "n_heads": 4}, ModelConfig)
    assert "multiple of n_heads" in str(exc)


def test_phase_freezing_every_group_is_rejected() -> None:
    exc = _error({"name": "frozen", "epochs": 1, "frozen_groups": list(PARAM_GROUPS)}, PhaseConfig)
    assert "freezes every group" in str(exc)


def test_phase_freezing_unknown_group_is_rejected() -> None:
    exc = _error({"name": "a", "epochs": 1, "frozen_groups": ["decoder"]}, PhaseConfig)
    assert "frozen_groups.0" in _locs(exc)


def test_batch_memory_bound_is_rejected_naming_batch_size() -> None:
    # default system: 8·(L·M + M·N + L·N) = 38 912 bytes per scene; 65 536 scenes ≈ 2.4 GiB > 2 GiB
    exc = _error({"data": {"batch_size": 65_536}})
    assert "data.batch_size" in str(exc) and "GiB" in str(exc)


def test_batch_within_memory_bound_is_accepted() -> None:
    assert TrainingJobConfig.model_validate({"data": {"batch_size": 32_768}}).data.batch_size == 32_768


def test_duplicate_phase_names_are_rejected() -> None:
    exc = _error({"phases": [{"name": "a", "epochs": 1}, {"name": "a", "epochs": 1}]})
    assert "unique" in str(exc)


def test_snapshots_above_elements_are_rejected() -> None:
    exc = _error({"n_ris_h": 2, "n_ris_v": 2, "n_snapshots": 8}, SystemConfig)
    assert "n_snapshots" in str(exc)


def test_diagnostic_defaults_equal_seed_diagnostic() -> None:
    config = DiagnosticJobConfig()
    (phase,) = config.phases
    assert phase.name == "k_only" and phase.epochs == 10
    w = phase.loss_weights
    assert (w.lam_k, w.lam_aux, w.lam_cov, w.lam_gap, w.lam_margin) == (1.5, 0.5, 0.1, 0.0, 0.0)
    assert (config.data.n_train, config.data.n_val, config.data.batch_size) == (5000, 1000, 64)
    assert phase.frozen_groups == () and phase.amp is False, "the predecessor's run: backbone unfrozen, AMP off"


def test_lam_k_alias_is_accepted() -> None:
    assert LossWeights.model_validate({"lam_K": 1.5}).lam_k == 1.5
    assert LossWeights.model_validate({"lam_k": 2.5}).lam_k == 2.5
    assert LossWeights(lam_K=0.7).lam_k == 0.7


def test_sha256_is_stable_and_sensitive() -> None:
    a, b = TrainingJobConfig(), TrainingJobConfig.model_validate(TrainingJobConfig().model_dump(mode="json"))
    assert a.sha256() == b.sha256()
    c = TrainingJobConfig.model_validate({"data": {"seed": 1}})
    assert a.sha256() != c.sha256()


def test_configs_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SystemConfig().k_max = 3  # type: ignore[misc]
