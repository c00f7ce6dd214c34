"""Service settings: one `Settings(BaseSettings)` read from the environment, shared by API, worker and reaper.

Owns every environment variable of ris-jobs (README.md, "Settings"); no other module reads `os.environ`.
Variables have no prefix (`DATABASE_URL`, `REDIS_URL`, ...). Bad values fail at startup with a message that
names the variable. Must not import FastAPI, torch or anything of ours but the standard library.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Default hard time limit of one job attempt: 6 h.
_DEFAULT_HARD_LIMIT_S = 6 * 3600
#: A configured key written as `sha256:<64 hex>` is the digest of the key, not the key.
SHA256_KEY_PREFIX = "sha256:"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _key_digest(key: SecretStr) -> str:
    """The lower-case sha256 hex of a configured key (given in plain text or as sha256:<hex>)."""
    text = key.get_secret_value()
    if text.startswith(SHA256_KEY_PREFIX):
        return text.removeprefix(SHA256_KEY_PREFIX).lower()
    return hashlib.sha256(text.encode()).hexdigest()


class Settings(BaseSettings):
    """Every knob of the service; the README documents each from its `description`."""

    # hide_input_in_errors: a validation error must never print API_KEYS.
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", frozen=True, case_sensitive=False, hide_input_in_errors=True
    )

    database_url: str = Field(
        "sqlite:///./var/ris-jobs.sqlite",
        description="SQLAlchemy URL of the job store: sqlite:///path (WAL mode) or postgresql+psycopg://user@host/db",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL: Celery broker, live metric pub/sub and cancel flags (nothing durable)",
    )
    artifact_dir: Path = Field(
        Path("./var/artifacts"),
        description="the artifact store when ARTIFACT_URL is not set: a directory holding "
        "jobs/<job id>/{checkpoints/,artifacts/,log.txt} and uploads/",
    )
    artifact_url: str | None = Field(
        None,
        description="the artifact store of checkpoints, logs, reports, plots and uploads: a directory, file://path, "
        "or s3://bucket/prefix on any S3-compatible store (credentials and endpoint from AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION; needs the [s3] extra). "
        "Unset: ARTIFACT_DIR. Every API, worker and reaper of one deployment must name the same store",
    )
    artifact_presigned_redirect: bool = Field(
        False,
        description="answer checkpoint and artifact downloads with a 307 to a presigned URL of the object (stores "
        "that can sign, such as S3), so that the bytes do not pass through the API",
    )
    artifact_presigned_expiry_s: int = Field(
        300, ge=1, le=7 * 86_400, description="lifetime of a presigned download URL, seconds"
    )
    orphan_grace_s: float = Field(
        3600.0, gt=0, le=30 * 86_400,
        description="the reaper removes temporary objects and checkpoint objects that no record points at once "
        "they are this old, seconds (longer than the slowest checkpoint upload)",
    )
    artifact_sweep_interval_s: float = Field(
        600.0, gt=0, le=86_400, description="seconds between the reaper's sweeps of orphaned artifact objects"
    )
    scratch_dir: Path = Field(
        Path("./var/scratch"),
        description="a worker's local working directory: the trainer writes checkpoints and the log here before the "
        "worker uploads them to the artifact store; never shared between machines",
    )
    log_upload_interval_s: float = Field(
        2.0, gt=0, le=3600, description="a running job's log is uploaded to the artifact store at least this often, "
        "seconds",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="comma-separated API keys accepted in X-API-Key, each in plain text or as sha256:<64 hex> of "
        "the key; each key sees only its own jobs; empty (and no ADMIN_API_KEYS) = authentication off",
    )
    admin_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="comma-separated API keys (plain or sha256:<64 hex>) that see and control every job",
    )
    rate_limit_per_s: float = Field(
        20.0, ge=0, le=100_000,
        description="requests per second each API key may make on average (token bucket in Redis); 0 = no limit; "
        "not applied when authentication is off",
    )
    rate_limit_burst: int = Field(
        100, ge=1, le=1_000_000, description="requests an API key may make at once before RATE_LIMIT_PER_S applies"
    )
    store_retry_deadline_s: float = Field(
        300.0, gt=0, le=86_400,
        description="how long a worker keeps retrying a metric flush, checkpoint record or terminal state while "
        "the database is unreachable (bounded exponential backoff), seconds",
    )
    job_queue: str = Field(
        "jobs", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="prefix of the Celery queues: jobs go to <JOB_QUEUE>.gpu or <JOB_QUEUE>.cpu by resources.device",
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="largest request body, bytes")
    max_upload_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, le=16 * 1024**3,
        description="largest checkpoint upload (POST /v1/checkpoints, application/octet-stream), bytes",
    )
    max_queued_jobs_per_key: int = Field(
        100, ge=1, le=1_000_000, description="QUEUED jobs one API key (or the anonymous user) may have; more → 429"
    )
    max_gpus_per_job: int = Field(
        8, ge=1, le=64,
        description="most GPUs (training processes) one job may ask for in resources.gpus; more → 422. Set it to "
        "the GPUs of the largest worker host",
    )
    lease_timeout_s: float = Field(
        60.0, gt=0, le=86_400, description="seconds without a heartbeat after which the reaper treats a worker as lost"
    )
    heartbeat_interval_s: float = Field(10.0, gt=0, le=3600, description="seconds between worker heartbeats")
    reaper_interval_s: float = Field(
        15.0, gt=0, le=3600, description="seconds between reaper sweeps (expired leases, undispatched QUEUED jobs)"
    )
    cancel_grace_s: float = Field(
        60.0, gt=0, le=86_400, description="seconds a CANCELLING job may keep running before the reaper escalates"
    )
    job_soft_time_limit_s: float = Field(
        _DEFAULT_HARD_LIMIT_S - 120,
        gt=0,
        le=30 * 86_400,
        description="Celery soft time limit of one attempt, seconds: the job checkpoints and ends FAILED(TIMEOUT)",
    )
    job_hard_time_limit_s: float = Field(
        _DEFAULT_HARD_LIMIT_S,
        gt=0,
        le=30 * 86_400,
        description="Celery hard time limit of one attempt, seconds: the worker child is killed",
    )
    redispatch_after_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="a job QUEUED this long, seconds, whose id is in no live broker message (lost in a Redis restart, "
        "or its enqueue failed) is re-dispatched by the reaper",
    )
    checkpoint_interval_s: float = Field(
        300.0, gt=0, le=86_400, description="a running job checkpoints mid-epoch at most this often, seconds"
    )
    metrics_flush_interval_s: float = Field(
        1.0, gt=0, le=60, description="the worker flushes buffered metric points at least this often, seconds"
    )
    metrics_flush_max_points: int = Field(
        200, ge=1, le=10_000, description="the worker flushes when this many metric points are buffered"
    )
    sweep_poll_interval_s: float = Field(
        2.0, gt=0, le=600, description="a sweep's driver looks for finished trials and starts new ones this often, "
        "seconds"
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="when set, every training and diagnostic job is also copied to this MLflow tracking "
        "server or store (params, metrics, final checkpoint, report); a failed export never fails a job "
        "(a local file store, file:///path, also needs MLFLOW_ALLOW_FILE_STORE=true)"
    )
    mlflow_experiment: str = Field("ris-jobs", min_length=1, max_length=200,
                                   description="the MLflow experiment the runs go to")
    allow_fault_injection: bool = Field(
        False,
        description="accept job configs whose `debug` section injects faults (NaN losses, sleeps, ignored cancels, "
        "OOM); false: the API answers 422 naming config.debug and a worker fails such a job USER_CONFIG",
    )

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _check_digests(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in value:
            text = key.get_secret_value()
            if text.startswith(SHA256_KEY_PREFIX) and not _SHA256_HEX.fullmatch(text.removeprefix(SHA256_KEY_PREFIX)):
                raise ValueError("a key given as sha256:<hex> needs exactly 64 hex digits after sha256:")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError(f"DATABASE_URL must be sqlite:///… or postgresql+psycopg://…, got {value.split(':')[0]}:…")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        if self.heartbeat_interval_s * 2 > self.lease_timeout_s:
            raise ValueError(
                f"LEASE_TIMEOUT_S ({self.lease_timeout_s}) must be at least twice HEARTBEAT_INTERVAL_S "
                f"({self.heartbeat_interval_s}), or a slow heartbeat loses the lease"
            )
        if self.job_soft_time_limit_s >= self.job_hard_time_limit_s:
            raise ValueError(
                f"JOB_SOFT_TIME_LIMIT_S ({self.job_soft_time_limit_s}) must be < JOB_HARD_TIME_LIMIT_S "
                f"({self.job_hard_time_limit_s}) so that a job can checkpoint before it is killed"
            )
        return self

    @property
    def artifact_location(self) -> str:
        """Where the artifact store is: ARTIFACT_URL, else ARTIFACT_DIR."""
        return self.artifact_url or str(self.artifact_dir)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_api_keys)

    def key_digests(self) -> list[tuple[str, bool]]:
        """(sha256 hex of the key, is an admin key) of every configured key, plain or given as a digest."""
        return [(_key_digest(k), False) for k in self.api_keys] + [(_key_digest(k), True) for k in self.admin_api_keys]

    @property
    def broker_visibility_timeout_s(self) -> float:
        """Redis visibility timeout, seconds: longer than the longest job, so Redis never redelivers a live one."""
        return self.job_hard_time_limit_s + 3600.0


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (raises on bad values)."""
    return Settings()
