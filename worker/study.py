"""A sweep's Optuna study: where it is stored, its name, its sampler, pruner and distributions.

Owns: `study_name`, `storage_url`, `open_study` (the one way the driver and the trials open a study),
`distributions`, `make_sampler`, `make_pruner` and `trial_step`. The study lives in Optuna's
RDB storage in the jobs' own database (DATABASE_URL), so `optuna-dashboard <DATABASE_URL>` opens it; its name is
`sweep-<sweep job id>`. Optuna is imported lazily (the prefork parent imports worker modules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import make_url

from api_schemas.sweeps import CategoricalParam, FloatParam, IntParam, PrunerConfig, SweepJobConfig

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

#: How long a SQLite connection of the study waits for the write lock, seconds.
SQLITE_TIMEOUT_S = 30.0


def study_name(sweep_id: str) -> str:
    """The Optuna study of the sweep job `sweep_id`."""
    return f"sweep-{sweep_id}"


def storage_url(database_url: str) -> str:
    """The SQLAlchemy URL Optuna opens: the jobs' database, with psycopg 3 for a plain postgresql:// URL."""
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def open_study(database_url: str, sweep_id: str, config: SweepJobConfig, *, create: bool) -> optuna.Study:
    """The sweep's study with its sampler and pruner; `create` makes it when it does not exist yet."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(database_url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    name = study_name(sweep_id)
    sampler, pruner = make_sampler(config), make_pruner(config.pruner)
    if create:
        return optuna.create_study(storage=storage, study_name=name, direction=config.objective.direction,
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def make_sampler(config: SweepJobConfig, *, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of the sweep, seeded with `seed + trials_so_far`: a driver that resumes a study must not
    replay the random draws its predecessor already used (its trials would repeat earlier ones)."""
    import optuna

    seed = None if config.seed is None else config.seed + trials_so_far
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    import optuna

    if config.type == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_resource,
                                                      reduction_factor=config.reduction_factor)
    if config.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials,
                                           n_warmup_steps=config.n_warmup_steps)
    return optuna.pruners.NopPruner()


def distributions(config: SweepJobConfig) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each space path."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for path, spec in config.space.items():
        if isinstance(spec, FloatParam):
            out[path] = FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, IntParam):
            out[path] = IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, CategoricalParam):
            out[path] = CategoricalDistribution(spec.choices)
    return out


def trial_step(phase_epochs: list[tuple[str, int]], phase: str, epoch: int) -> int:
    """The step a trial reports at: epochs completed in the whole run (earlier phases' epochs + `epoch`)."""
    offset = 0
    for name, epochs in phase_epochs:
        if name == phase:
            return offset + epoch
        offset += epochs
    raise KeyError(f"phase {phase!r} is not in the run")
