"""Hyper-parameter sweeps: the `sweep` job's config, its search space, and the trial listing.

Owns: the parameter types (`FloatParam`, `IntParam`, `CategoricalParam`), `Objective`, `PrunerConfig`,
`SweepBase`, `SweepJobConfig` (checked at submit against the base config's own schema), `set_path` (the one
way a space path is applied to a config), the child jobs' trial tags (`trial_tag`, `trial_number`),
`TrialState`, `TrialPublic`, `TrialsPage`. Pure pydantic, no Optuna:
the worker's sweep driver turns these into an Optuna study.

A space path names one leaf of the base config as stored (`model_dump(mode="json")`), dot-separated, with list
indices as numbers: `phases.2.lr`, `model.d_model`. At submit, the base config is built once with each bound
(`low`, `high`) and each choice substituted, so a path that does not exist, or a value outside the field's
bounds, is a 422 naming the path.
"""

from __future__ import annotations

import copy
import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api_schemas.config import DiagnosticJobConfig, TrainingJobConfig

#: A space path: dot-separated keys and list indices of the base config.
SPACE_PATH_PATTERN = r"^[a-z_][a-z0-9_]*(\.([a-z_][a-z0-9_]*|[0-9]{1,2}))*$"
#: Largest number of dimensions of a search space.
MAX_SPACE_DIMS = 32
#: Most trials of one sweep, and most trials running at once.
MAX_TRIALS = 1000
MAX_CONCURRENT_TRIALS = 64
#: Values a categorical parameter may take.
Choice = str | int | float | bool | None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FloatParam(_Frozen):
    """A real parameter in [low, high], sampled uniformly, or log-uniformly with `log`."""

    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    step: float | None = Field(None, gt=0.0, allow_inf_nan=False, description="a grid step (not with log)")

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("step cannot be used with log")
        return self


class IntParam(_Frozen):
    """An integer parameter in [low, high] (both included)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("step cannot be used with log")
        return self


class CategoricalParam(_Frozen):
    """One of a list of values."""

    type: Literal["categorical"]
    choices: tuple[Choice, ...] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices must be distinct, got {list(self.choices)}")
        return self


def _check_bounds(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scaled parameter needs low > 0, got {low}")


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Frozen):
    """The per-epoch metric each trial reports, and whether larger is better."""

    metric: str = Field("val/k_acc", pattern=r"^(val|train)/[a-z0-9_]{1,100}$",
                        description="an epoch-end metric key (e.g. val/k_acc, val/loss, val/rmse_range_m)")
    direction: Literal["maximize", "minimize"] = "maximize"


class PrunerConfig(_Frozen):
    """Early stopping of unpromising trials, judged at every epoch end on the objective.

    asha: asynchronous successive halving (a trial continues past a rung only while it is in the top
    1/reduction_factor of the trials that reached that rung); median: stop a trial below the median of earlier
    trials at the same epoch; none: every trial runs to the end.
    """

    type: Literal["asha", "median", "none"] = "asha"
    min_resource: int = Field(1, ge=1, le=1000, description="epochs before the first rung (asha)")
    reduction_factor: int = Field(3, ge=2, le=10, description="asha's eta")
    n_startup_trials: int = Field(2, ge=0, le=100, description="trials that are never pruned (median)")
    n_warmup_steps: int = Field(1, ge=0, le=1000, description="epochs before a trial may be pruned (median)")


class SweepBase(_Frozen):
    """The job every trial starts from: its kind and its config (defaults fill what is left out)."""

    kind: Literal["training", "diagnostic"] = "training"
    config: dict[str, Any] = Field(default_factory=dict)

    def config_model(self) -> type[TrainingJobConfig]:
        return DiagnosticJobConfig if self.kind == "diagnostic" else TrainingJobConfig

    def full_config(self) -> dict[str, Any]:
        """The base config with every default filled in, as stored (raises ValidationError)."""
        return self.config_model().model_validate(self.config).model_dump(mode="json")


class SweepJobConfig(_Frozen):
    """The config of a `sweep` job: trials of `base` with `space` sampled by Optuna."""

    base: SweepBase = SweepBase()
    space: dict[Annotated[str, Field(pattern=SPACE_PATH_PATTERN, max_length=200)], ParamSpec] = Field(
        min_length=1, max_length=MAX_SPACE_DIMS)
    objective: Objective = Objective()
    n_trials: int = Field(16, ge=1, le=MAX_TRIALS)
    max_concurrent: int = Field(4, ge=1, le=MAX_CONCURRENT_TRIALS, description="trials running at once, at most")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: PrunerConfig = PrunerConfig()
    seed: int | None = Field(0, ge=0, le=2**31 - 1, description="the sampler's seed; None = random")

    @model_validator(mode="after")
    def _check_space(self) -> SweepJobConfig:
        try:
            base = self.base.full_config()
        except ValidationError as exc:
            raise ValueError(f"base.config is invalid: {_errors_text(exc)}") from exc
        model = self.base.config_model()
        for path, spec in self.space.items():
            for value in _probe_values(spec):
                try:
                    model.model_validate(set_path(base, path, value))
                except KeyError as exc:
                    raise ValueError(f"space path {path!r}: {exc.args[0]}") from exc
                except ValidationError as exc:
                    raise ValueError(
                        f"space path {path!r}: the value {value!r} is outside what the field allows: "
                        f"{_errors_text(exc)}") from exc
        return self

    def trial_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The base config with `params` (space path → value) applied, validated, as stored."""
        config = self.base.full_config()
        for path, value in params.items():
            config = set_path(config, path, value)
        return self.base.config_model().model_validate(config).model_dump(mode="json")


def _probe_values(spec: FloatParam | IntParam | CategoricalParam) -> list[Any]:
    if isinstance(spec, CategoricalParam):
        return list(spec.choices)
    return [spec.low, spec.high]


def _errors_text(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())


def get_path(config: dict[str, Any], path: str) -> Any:
    """The value at `path` in a stored config. Raises KeyError naming the first part that does not exist."""
    node: Any = config
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(f"{part!r} does not exist in the base config (at {path!r})")
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `config` with the leaf at `path` replaced by `value`.

    Raises:
        KeyError: a part of the path does not exist, or it names a section rather than one setting.
    """
    current = get_path(config, path)
    if isinstance(current, dict | list) and not isinstance(value, dict | list):
        raise KeyError(f"{path!r} names a section of the config, not one setting")
    out = copy.deepcopy(config)
    *parents, leaf = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return out


#: Tag a sweep puts on each of its child jobs: `trial:<number>`.
TRIAL_TAG_PREFIX = "trial:"


def trial_tag(number: int) -> str:
    return f"{TRIAL_TAG_PREFIX}{number}"


def trial_number(tags: list[str]) -> int | None:
    """The trial number a child job's tags carry, or None."""
    for tag in tags:
        if tag.startswith(TRIAL_TAG_PREFIX) and tag[len(TRIAL_TAG_PREFIX):].isdigit():
            return int(tag[len(TRIAL_TAG_PREFIX):])
    return None


class TrialState(StrEnum):
    #: waiting for its child job to start, or running
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    #: stopped early by the pruner (its child job ended CANCELLED, reason PRUNED)
    PRUNED = "PRUNED"
    #: its child job failed or was cancelled by a user
    FAIL = "FAIL"


class TrialPublic(BaseModel):
    """One trial of a sweep: what it tried, how it ended, and the child job that ran it."""

    number: int
    params: dict[str, Any]
    state: TrialState
    value: float | None = Field(None, description="the objective's last value (None while unknown or not finite)")
    job_id: str
    job_state: str
    links: dict[str, str]

    @classmethod
    def finite(cls, value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None


class TrialsPage(BaseModel):
    sweep_id: str
    objective: Objective
    trials: list[TrialPublic]
    best: TrialPublic | None = None
