"""api_schemas.sweeps and api_schemas.lineage: space paths, trial configs, parameter checks, digests, tags."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api_schemas import SweepJobConfig, TrainingJobConfig, config_sha256
from api_schemas.lineage import init_mismatch
from api_schemas.sweeps import get_path, set_path, trial_number, trial_tag


def _sweep(space: dict[str, Any], **extra: Any) -> SweepJobConfig:
    return SweepJobConfig.model_validate({"base": {"kind": "training", "config": {}}, "space": space, **extra})


def test_set_path_replaces_one_leaf_in_a_copy() -> None:
    config = TrainingJobConfig().model_dump(mode="json")
    changed = set_path(config, "phases.2.lr", 5e-4)
    assert get_path(changed, "phases.2.lr") == 5e-4
    assert get_path(config, "phases.2.lr") == 1e-3  # the original is untouched
    with pytest.raises(KeyError, match="'9' does not exist"):
        set_path(config, "phases.9.lr", 1.0)
    with pytest.raises(KeyError, match="names a section"):
        set_path(config, "model", 1)


def test_trial_config_applies_every_parameter_and_validates() -> None:
    sweep = _sweep({"phases.2.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                    "model.d_model": {"type": "categorical", "choices": [64, 128, 256]}})
    config = sweep.trial_config({"phases.2.lr": 2e-4, "model.d_model": 64})
    parsed = TrainingJobConfig.model_validate(config)
    assert (parsed.phases[2].lr, parsed.model.d_model) == (2e-4, 64)
    with pytest.raises(ValidationError):  # a combination the base config refuses
        _sweep({"model.n_heads": {"type": "int", "low": 3, "high": 4}}).trial_config({"model.n_heads": 3})


@pytest.mark.parametrize(("space", "needle"), [
    ({"phases.2.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, r"low \(0.001\) must be <= high"),
    ({"phases.2.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "needs low > 0"),
    ({"phases.2.lr": {"type": "float", "low": 1e-4, "high": 2.0}}, "the value 2.0 is outside"),
    ({"model.d_model": {"type": "categorical", "choices": [64, 64]}}, "distinct"),
    ({"data.batch_size": {"type": "int", "low": 0, "high": 64}}, "the value 0 is outside"),
    ({"Model.d_model": {"type": "int", "low": 8, "high": 16}}, "String should match pattern"),
])
def test_bad_spaces_are_refused_with_the_reason(space: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        _sweep(space)


def test_a_sweep_of_diagnostic_jobs_checks_against_the_diagnostic_schema() -> None:
    sweep = SweepJobConfig.model_validate({
        "base": {"kind": "diagnostic"},
        "space": {"checks.overfit_steps": {"type": "int", "low": 0, "high": 100}}})
    assert sweep.trial_config({"checks.overfit_steps": 7})["checks"]["overfit_steps"] == 7
    with pytest.raises(ValidationError, match="'checks' does not exist"):
        _sweep({"checks.overfit_steps": {"type": "int", "low": 0, "high": 100}})


def test_trial_tags_round_trip() -> None:
    assert trial_number(["team", trial_tag(12)]) == 12
    assert trial_number(["team", "trial:x"]) is None


def test_the_digest_ignores_an_unset_init_from_and_key_order() -> None:
    config = TrainingJobConfig().model_dump(mode="json")
    assert config["init_from"] is None
    without = {k: v for k, v in reversed(config.items()) if k != "init_from"}
    assert config_sha256(config) == config_sha256(without) == TrainingJobConfig().sha256()
    with_init = {**config, "init_from": {"upload_id": "0" * 32}}
    assert config_sha256(with_init) != config_sha256(config)


def test_init_mismatch_names_what_differs() -> None:
    base = TrainingJobConfig().model_dump(mode="json")
    assert init_mismatch(base, set_path(base, "model.dropout", 0.1)) is None
    assert init_mismatch(base, set_path(base, "phases.2.lr", 1e-4)) is None
    assert "model.d_model" in (init_mismatch(base, set_path(base, "model.d_model", 64)) or "")
    assert "system" in (init_mismatch(base, set_path(base, "system.n_ris_h", 8)) or "")
