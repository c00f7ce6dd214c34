"""Evaluation of a trained model against the classical baselines: the job config and the report
(SCIENCE.md, "Estimators and evaluation"; ARCHITECTURE.md, "HTTP API", /report).

Owns: EvaluationConfig (scenes, baselines, tolerances, CRB; what `ris_model.evaluate.evaluation.evaluate` takes),
EvaluationJobConfig (adds the checkpoint source), EvaluationJobCreate's config, the report wire types
(EvaluationReport and its tables) and the report's Markdown. Pure pydantic, no torch: the API renders the
report. The system config is not here: the scenes follow the checkpoint's own config, so that they match
what the model was trained for.

Units: angles in degrees (`_deg`), ranges in meters (`_m`), SNR in dB (`_db`). A metric that has no data
(no matched pair in a bin, a count-only baseline's RMSE) is None, never NaN (JSON has no NaN).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from api_schemas.checkpoints import CHECKPOINT_NAME_PATTERN
from api_schemas.markdown import markdown_table

#: Baselines an evaluation may run (ris_model.estimators): the network's own count and positions (`model_raw`;
#: the `model` row is polished and its count tested against the residual at the scenes' SNR, as SOMP's is);
#: SOMP (counts and positions); MDL/AIC counts on the compressed measurement covariance; MDL/AIC counts on an
#: oracle uncompressed RIS array.
Baseline = Literal["model_raw", "somp", "mdl_measurement", "aic_measurement", "mdl_oracle", "aic_oracle"]
BASELINES: tuple[Baseline, ...] = get_args(Baseline)
#: The method name of the learned model in every table: every count fitted and polished by the local ML search,
#: and the count chosen by penalized likelihood with the K-head's posterior (ris_model.estimators.order).
MODEL_METHOD = "model"
#: The network's own count (the K-head's) and positions, before the polish and the count selection.
RAW_MODEL_METHOD = "model_raw"
#: An upload id: the uuid4 hex that POST /v1/checkpoints returns.
UPLOAD_ID_PATTERN = r"^[0-9a-f]{32}$"
_JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"
MAX_EVALUATION_SCENES = 20_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------- config


class JobCheckpointSource(_Frozen):
    """A checkpoint of an earlier job of this service (`final`, `latest` or a checkpoint name)."""

    job_id: str = Field(pattern=_JOB_ID_PATTERN)
    checkpoint: str = Field("final", pattern=CHECKPOINT_NAME_PATTERN)


class UploadCheckpointSource(_Frozen):
    """A checkpoint file uploaded with POST /v1/checkpoints; validated by the worker (weights_only load)."""

    upload_id: str = Field(pattern=UPLOAD_ID_PATTERN)


class ToleranceConfig(_Frozen):
    """A matched estimate is a true positive within all three tolerances."""

    azimuth_deg: float = Field(5.0, gt=0.0, le=180.0)
    elevation_deg: float = Field(5.0, gt=0.0, le=180.0)
    range_m: float = Field(1.0, gt=0.0, le=1000.0)


class SompGridConfig(_Frozen):
    """The SOMP dictionary grid (azimuth × elevation × inverse range); default 24 × 12 × 6."""

    n_azimuth: int = Field(24, ge=1, le=128)
    n_elevation: int = Field(12, ge=1, le=64)
    n_range: int = Field(6, ge=1, le=32)


def _default_snr_bins() -> tuple[tuple[float, float], ...]:
    return ((-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))


def _default_range_bins() -> tuple[tuple[float, float], ...]:
    return ((0.5, 2.0), (2.0, 5.0), (5.0, 10.0))


def _check_bins(bins: tuple[tuple[float, float], ...], unit: str) -> tuple[tuple[float, float], ...]:
    for lo, hi in bins:
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"each bin must be [lo, hi] with finite lo < hi ({unit}), got [{lo}, {hi}]")
    return bins


class EvaluationConfig(_Frozen):
    """What to evaluate on, and against what (the CLI's --config; an evaluation job adds the checkpoint)."""

    n_scenes: int = Field(2000, ge=1, le=MAX_EVALUATION_SCENES, description="test scenes")
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="scene stream seed; None = the checkpoint's data.seed (its test split)")
    snr_bins_db: tuple[tuple[float, float], ...] = Field(
        default_factory=_default_snr_bins, min_length=1, max_length=16, description="[lo, hi) SNR bins, dB")
    range_bins_m: tuple[tuple[float, float], ...] = Field(
        default_factory=_default_range_bins, min_length=1, max_length=16,
        description="[lo, hi) bins of the true range for the range-RMSE table, m")
    k_values: tuple[int, ...] | None = Field(
        None, min_length=1, max_length=8, description="source counts to draw scenes from; None = 1..K_MAX")
    baselines: tuple[Baseline, ...] = Field(BASELINES, max_length=len(BASELINES))
    tolerances: ToleranceConfig = ToleranceConfig()
    crb: bool = Field(True, description="compute the median √CRB per bin and the RMSE/√CRB ratios")
    somp_grid: SompGridConfig = SompGridConfig()
    batch_size: int = Field(256, ge=1, le=4096, description="scenes per model forward pass")

    @field_validator("snr_bins_db")
    @classmethod
    def _snr_bins(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        return _check_bins(v, "dB")

    @field_validator("range_bins_m")
    @classmethod
    def _range_bins(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        return _check_bins(v, "m")

    @field_validator("k_values")
    @classmethod
    def _k_values(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return v
        if len(set(v)) != len(v) or min(v) < 1 or max(v) > 8:
            raise ValueError(f"k_values must be distinct counts in 1..8 (at most the checkpoint's K_MAX), got {v}")
        return tuple(sorted(v))

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"baselines must be distinct, got {v}")
        return v


def _source_tag(value: object) -> str:
    has_upload = isinstance(value, UploadCheckpointSource) or (isinstance(value, dict) and "upload_id" in value)
    return "upload" if has_upload else "job"


CheckpointSource = Annotated[
    Annotated[JobCheckpointSource, Tag("job")] | Annotated[UploadCheckpointSource, Tag("upload")],
    Discriminator(_source_tag),
]


class EvaluationJobConfig(EvaluationConfig):
    """The config of an `evaluation` job: a checkpoint source plus EvaluationConfig."""

    checkpoint: CheckpointSource

    @model_validator(mode="before")
    @classmethod
    def _require_checkpoint(cls, data: object) -> object:
        if isinstance(data, dict) and "checkpoint" not in data:
            raise ValueError('checkpoint is required: {"job_id": "...", "checkpoint": "final"} or '
                             '{"upload_id": "..."} (from POST /v1/checkpoints)')
        return data


# ---------------------------------------------------------------------------------------------- report


class MethodMetrics(BaseModel):
    """One method's metrics over one bin. Count-only baselines have no geometry (None)."""

    method: str
    n_scenes: int
    k_acc: float | None
    k_under: float | None
    k_over: float | None
    n_true: int | None = None
    n_matched: int | None = None
    rmse_azimuth_deg: float | None = None
    rmse_elevation_deg: float | None = None
    rmse_range_m: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    #: RMSE / median √CRB of the bin (None without CRB or without matched pairs)
    crb_ratio_azimuth: float | None = None
    crb_ratio_elevation: float | None = None
    crb_ratio_range: float | None = None
    #: the share of matched pairs outside the tolerances (gross errors), and the RMSE over the others (the true
    #: positives): the typical error, which the RMSE over all matched pairs hides behind a few gross ones
    outlier_share: float | None = None
    tp_rmse_azimuth_deg: float | None = None
    tp_rmse_elevation_deg: float | None = None
    tp_rmse_range_m: float | None = None


class CrbSummary(BaseModel):
    """Median √CRB over the true sources of a bin (the bound on one source's RMSE)."""

    n_sources: int
    azimuth_deg: float | None
    elevation_deg: float | None
    range_m: float | None


class BinTable(BaseModel):
    """One row group: the scenes (or, by range, the true sources) with lo ≤ value < hi."""

    label: str
    lo: float | None  # None for the "all" row and for a K row (lo = hi = K there)
    hi: float | None
    n_scenes: int
    #: what n_scenes counts: scenes (SNR and K tables) or true sources (range table)
    counts: Literal["scenes", "sources"] = "scenes"
    methods: list[MethodMetrics]
    crb: CrbSummary | None = None


class ConfusionMatrix(BaseModel):
    """counts[t][p]: scenes with true K = true_k[t] and estimated K = predicted_k[p] (last column: > K_MAX)."""

    true_k: list[int]
    predicted_k: list[str]
    counts: list[list[int]]


class EvaluationArtifact(BaseModel):
    name: str
    media_type: str
    size: int
    sha256: str
    url: str | None = None


class EvaluationReport(BaseModel):
    """The evaluation of a model and the baselines side by side, by SNR bin, by K and by range bin."""

    kind: Literal["evaluation"] = "evaluation"
    checkpoint: dict[str, str | int | float | None] = {}
    system: dict[str, float | int | str | None] = {}
    config: EvaluationConfig
    methods: list[str]
    by_snr: list[BinTable]
    by_k: list[BinTable]
    by_range: list[BinTable]
    k_confusion: ConfusionMatrix
    timing_s: dict[str, float] = {}
    artifacts: list[EvaluationArtifact] = []

    def to_markdown(self) -> str:
        lines = ["# Evaluation report", ""]
        if self.checkpoint:
            lines += ["Checkpoint: " + ", ".join(f"{k} = {v}" for k, v in self.checkpoint.items()), ""]
        cfg = self.config
        tol = cfg.tolerances
        lines += [f"{self.by_snr[-1].n_scenes} test scenes; tolerances {tol.azimuth_deg:g}° / "
                  f"{tol.elevation_deg:g}° / {tol.range_m:g} m; methods: {', '.join(self.methods)}.", ""]
        for title, tables in (("By SNR", self.by_snr), ("By number of sources K", self.by_k),
                              ("By true range (matched sources)", self.by_range)):
            lines += [f"## {title}", ""]
            for table in tables:
                lines += _table_markdown(table)
        cm = self.k_confusion
        confusion_rows = ((str(t), *(str(c) for c in row)) for t, row in zip(cm.true_k, cm.counts, strict=True))
        lines += ["## K confusion matrix of the model (rows: true K, columns: estimated K)", "",
                  *markdown_table(("true \\ est", *cm.predicted_k), confusion_rows)]
        if self.artifacts:
            lines += ["", "## Plots and files", ""]
            lines += [f"- [{a.name}]({a.url or a.name}) ({a.size} bytes)" for a in self.artifacts]
        if self.timing_s:
            lines += ["", "## Timing (s)", ""] + [f"- {k}: {v:.3f}" for k, v in self.timing_s.items()]
        return "\n".join(lines) + "\n"


_COLUMNS = (("K_acc", "k_acc"), ("K_under", "k_under"), ("K_over", "k_over"), ("RMSE φ °", "rmse_azimuth_deg"),
            ("RMSE θ °", "rmse_elevation_deg"), ("RMSE r m", "rmse_range_m"), ("P", "precision"), ("R", "recall"),
            ("F1", "f1"), ("φ/√CRB", "crb_ratio_azimuth"), ("θ/√CRB", "crb_ratio_elevation"),
            ("r/√CRB", "crb_ratio_range"), ("outliers", "outlier_share"), ("TP RMSE φ °", "tp_rmse_azimuth_deg"),
            ("TP RMSE θ °", "tp_rmse_elevation_deg"), ("TP RMSE r m", "tp_rmse_range_m"))


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _table_markdown(table: BinTable) -> list[str]:
    lines = [f"### {table.label} ({table.n_scenes} {table.counts})", ""]
    if table.crb is not None:
        c = table.crb
        lines += [f"Median √CRB: φ {_fmt(c.azimuth_deg)}°, θ {_fmt(c.elevation_deg)}°, r {_fmt(c.range_m)} m "
                  f"({c.n_sources} sources)", ""]
    lines += markdown_table(("method", *(h for h, _ in _COLUMNS)),
                            ((m.method, *(_fmt(getattr(m, f)) for _, f in _COLUMNS)) for m in table.methods))
    return [*lines, ""]
