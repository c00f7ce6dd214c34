"""Every science setting of ris-jobs, as pydantic v2 models (docs/SCIENCE.md).

Owns: SystemConfig, ModelConfig, DataConfig, LossWeights, PhaseConfig, DebugConfig, TrainingJobConfig,
DiagnosticJobConfig and the named presets. Imports nothing of ours and no torch
(ARCHITECTURE.md, "The parts and their arrows").

Units: angles in the configs are degrees with a `_deg` suffix (people write configs); the science code
converts once to radians. Ranges in meters (`_m`), SNR in dB (`_db`), frequencies in Hz (`_hz`).
Every model forbids unknown fields and bounds every number, so that no config can ask for absurd memory.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api_schemas.evaluation import CheckpointSource
from api_schemas.lineage import config_sha256

#: Parameter groups of the network; a phase may freeze any of them (SCIENCE.md, "Losses and phases").
PARAM_GROUPS: tuple[str, ...] = ("backbone", "cov_head", "k_head", "geom_head")
ParamGroup = Literal["backbone", "cov_head", "k_head", "geom_head"]

#: Upper bound on the bytes that one training batch's inputs may take (complex64 y, H, codes).
MAX_BATCH_INPUT_BYTES = 2 * 1024**3
#: Upper bound on the scenes a fixed (non-fresh) pool may hold on the device.
MAX_POOL_SCENES = 200_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SystemConfig(_Frozen):
    """The physical system and the scene distribution (SCIENCE.md, "System model";
    ARCHITECTURE.md, "The data contract")."""

    n_ris_h: int = Field(12, ge=2, le=64, description="RIS elements along x (N_H)")
    n_ris_v: int = Field(12, ge=2, le=64, description="RIS elements along y (N_V)")
    element_spacing_wavelengths: float = Field(0.5, gt=0.05, le=2.0, description="d_h = d_v, in wavelengths")
    carrier_hz: float = Field(1e9, ge=1e8, le=1e11, description="carrier frequency")
    n_bs_antennas: int = Field(16, ge=1, le=128, description="M, BS half-wavelength ULA")
    n_snapshots: int = Field(16, ge=2, le=256, description="L, one RIS code per snapshot")
    k_max: int = Field(5, ge=1, le=8, description="largest number of sources K")
    azimuth_max_deg: float = Field(60.0, gt=0.0, le=89.0, description="phi in [-max, max]")
    elevation_max_deg: float = Field(30.0, gt=0.0, le=89.0, description="theta in [-max, max]")
    range_min_m: float = Field(0.5, gt=0.0, le=1000.0)
    range_max_m: float = Field(10.0, gt=0.0, le=1000.0)
    snr_min_db: float = Field(-5.0, ge=-40.0, le=60.0)
    snr_max_db: float = Field(20.0, ge=-40.0, le=60.0)
    rician_kappa_min: float = Field(0.5, ge=0.0, le=1000.0)
    rician_kappa_max: float = Field(10.0, ge=0.0, le=1000.0)
    power_min: float = Field(0.5, gt=0.0, le=1.0, description="relative source power, lower bound")
    power_max: float = Field(1.0, gt=0.0, le=1.0, description="relative source power, upper bound")
    min_separation_deg: float = Field(3.0, ge=0.0, le=30.0, description="in phi or theta")
    min_separation_m: float = Field(0.5, ge=0.0, le=10.0, description="in r")
    code_phase_bits: int | None = Field(None, ge=1, le=8, description="RIS phase quantization; None = off")
    steering_model: Literal["exact", "fresnel"] = "exact"

    @model_validator(mode="after")
    def _check_ranges(self) -> SystemConfig:
        pairs = [
            ("range_min_m", "range_max_m"),
            ("snr_min_db", "snr_max_db"),
            ("rician_kappa_min", "rician_kappa_max"),
            ("power_min", "power_max"),
        ]
        for lo, hi in pairs:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) must be <= {hi} ({getattr(self, hi)})")
        if self.n_snapshots > self.n_ris:
            raise ValueError(f"n_snapshots ({self.n_snapshots}) must be <= n_ris_h*n_ris_v ({self.n_ris})")
        return self

    @property
    def n_ris(self) -> int:
        """N, the number of RIS elements."""
        return self.n_ris_h * self.n_ris_v

    @property
    def wavelength_m(self) -> float:
        return 299_792_458.0 / self.carrier_hz

    @property
    def spacing_m(self) -> float:
        return self.element_spacing_wavelengths * self.wavelength_m


class ModelConfig(_Frozen):
    """Network sizes (SCIENCE.md, "The network"). `architecture` picks the backbone."""

    architecture: Literal["unrolled_omp", "seed_cov"] = Field(
        "unrolled_omp",
        description="unrolled_omp: K_MAX greedy look-cancel-look-again iterations through the known operator "
        "H·diag(c_l), a transformer over the looks (learned stopping rule and refinement); "
        "seed_cov: the reference baseline, a transformer over per-snapshot back-projections",
    )
    backprojection: Literal["whitened", "matched"] = Field(
        "whitened",
        description="z_l = (H·diag(c_l))ᴴ·W·y_l with W = (H·Hᴴ + εI)⁻¹ (whitened: undoes the Rician channel's "
        "colouring, the same for every snapshot since |c_l| = 1) or W = I (matched filter)",
    )
    grid_azimuth: int = Field(24, ge=2, le=256, description="search grid points in φ (unrolled_omp)")
    grid_elevation: int = Field(12, ge=2, le=128, description="search grid points in θ (unrolled_omp)")
    grid_inv_range: int = Field(6, ge=1, le=64, description="search grid points in 1/r (unrolled_omp)")
    normalize_atoms: bool = Field(True, description="divide matched-filter scores by ‖H_w·diag(c_l)·a(g)‖²")
    look_refine_rounds: int = Field(
        3, ge=0, le=8, description="off-grid pattern-search rounds per look before it is cancelled (unrolled_omp)")
    cuda_graphs: bool = Field(
        True, description="on CUDA, in training, replay as CUDA graphs the parameter-free look pass of unrolled_omp "
        "and the trainable forward + loss + backward of every architecture (one graph per batch shape; removes "
        "~2,300 kernel launches a step). No effect on the CPU or in eval mode")
    cov_head: Literal["geometric", "free"] = Field(
        "geometric",
        description="geometric: R̂ = Σ_k p_k·a(φ̂_k, θ̂_k, r̂_k)·a(·)ᴴ from the geometry head and a learned power per "
        "slot (the covariance loss then also trains localization); free: an unconstrained complex factor "
        "A ∈ C^{N×K_MAX} per slot (the baseline's head)",
    )
    d_model: int = Field(128, ge=8, le=1024)
    n_layers: int = Field(3, ge=1, le=12)
    n_heads: int = Field(4, ge=1, le=16)
    dropout: float = Field(0.0, ge=0.0, le=0.5)
    spectral_floor: float = Field(1e-3, gt=0.0, le=0.1, description="relative eigenvalue floor")

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        return self


class DataConfig(_Frozen):
    """How many scenes, in which batches, from which seed (SCIENCE.md, "Scenes")."""

    n_train: int = Field(5000, ge=1, le=100_000_000, description="train scenes per epoch")
    n_val: int = Field(1000, ge=1, le=MAX_POOL_SCENES)
    batch_size: int = Field(64, ge=1, le=65_536)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    fresh_train_each_epoch: bool = Field(
        True, description="redraw the n_train scenes every epoch (False: a fixed pool, reproducible by index)"
    )

    @model_validator(mode="after")
    def _check_pool(self) -> DataConfig:
        if not self.fresh_train_each_epoch and self.n_train > MAX_POOL_SCENES:
            raise ValueError(
                f"n_train ({self.n_train}) must be <= {MAX_POOL_SCENES} when fresh_train_each_epoch is false "
                "(a fixed pool lives on the device); set fresh_train_each_epoch=true for more scenes"
            )
        return self

    @property
    def n_batches_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)


class LossWeights(_Frozen):
    """The weights of the loss terms (SCIENCE.md, "Losses and phases"). Set only through a PhaseConfig."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    lam_cov: float = Field(1.0, ge=0.0, le=100.0, description="covariance NMSE")
    lam_k: float = Field(1.0, ge=0.0, le=100.0, alias="lam_K", description="K cross-entropy")
    lam_aux: float = Field(1.0, ge=0.0, le=100.0, description="geometry set loss (phi, theta, r)")
    lam_gap: float = Field(0.0, ge=0.0, le=100.0, description="eigengap hinge on Gram eigenvalues")
    lam_margin: float = Field(0.0, ge=0.0, le=100.0, description="subspace margin on Gram eigenvalues")


class PhaseConfig(_Frozen):
    """One training phase: its epochs, optimizer, frozen groups and its only set of loss weights."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,31}$")
    epochs: int = Field(..., ge=1, le=1000)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    warmup_fraction: float = Field(0.05, ge=0.0, le=0.5, description="linear warm-up, fraction of steps")
    frozen_groups: tuple[ParamGroup, ...] = ()
    loss_weights: LossWeights = LossWeights()  # the only place a loss weight is set (SCIENCE.md, "Losses and phases")
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU")
    grad_clip_norm: float | None = Field(1.0, gt=0.0, le=1e6)
    ema_decay: float | None = Field(None, ge=0.5, lt=1.0, description="None = no EMA")
    max_consecutive_nonfinite: int = Field(20, ge=1, le=10_000)

    @model_validator(mode="after")
    def _check_trainable(self) -> PhaseConfig:
        if len(set(self.frozen_groups)) == len(PARAM_GROUPS):
            raise ValueError(f"phase {self.name!r} freezes every group; nothing would train")
        return self


class DebugConfig(_Frozen):
    """Fault injection for tests. Off by default; the service refuses any switch unless ALLOW_FAULT_INJECTION."""

    nan_loss_term: str | None = Field(None, max_length=32, description="inject NaN into this loss term")
    nan_from_step: int = Field(0, ge=0, le=10**9, description="first global step that gets the NaN")
    nan_n_steps: int = Field(0, ge=0, le=10**9, description="how many steps get it (0 = every step)")
    sleep_per_step_s: float = Field(0.0, ge=0.0, le=10.0, description="slow a job down for fault tests")
    ignore_cancel: bool = Field(False, description="the trainer never polls should_stop")
    oom_at_step: int | None = Field(
        None, ge=0, le=10**9, description="raise torch.OutOfMemoryError at this global step (fault tests)"
    )

    @property
    def injects_faults(self) -> bool:
        """True when any switch differs from its default (all-default sections inject nothing)."""
        return self != DebugConfig()


def _default_training_phases() -> tuple[PhaseConfig, ...]:
    # geom: the look encoder, covariance and geometry heads learn where sources are; k_only: the K-head learns
    # to count on frozen features; joint: everything together, EMA weights validated and saved.
    # Sized so that the whole job (28 epochs × 100 steps × 4,096 fresh scenes) stays under 5 minutes on one
    # H100 (about 136 s at ~104 k samples/s, docs/RESULTS.md).
    return (
        PhaseConfig(
            name="geom", epochs=6, lr=2e-3, frozen_groups=("k_head",),
            loss_weights=LossWeights(lam_cov=0.5, lam_k=0.0, lam_aux=1.0),
        ),
        PhaseConfig(
            name="k_only", epochs=2, lr=2e-3, frozen_groups=("backbone", "cov_head", "geom_head"),
            loss_weights=LossWeights(lam_cov=0.0, lam_k=1.0, lam_aux=0.0),
        ),
        PhaseConfig(
            name="joint", epochs=20, lr=1e-3, ema_decay=0.998,
            loss_weights=LossWeights(lam_cov=0.5, lam_k=1.0, lam_aux=1.0, lam_gap=0.05, lam_margin=0.05),
        ),
    )


def _reference_diagnostic_phases() -> tuple[PhaseConfig, ...]:
    # The reference diagnostic (SCIENCE.md, "Losses and phases"): k_only weights, backbone unfrozen, AMP off.
    return (
        PhaseConfig(
            name="k_only", epochs=10, lr=1e-3, amp=False,
            loss_weights=LossWeights(lam_cov=0.1, lam_k=1.5, lam_aux=0.5),
        ),
    )


class TrainingJobConfig(_Frozen):
    """A phase-training run: system, model, data and the phases in order (SCIENCE.md, "Losses and phases")."""

    system: SystemConfig = SystemConfig()
    model: ModelConfig = ModelConfig()
    # large fresh batches: scenes cost nothing and the GPU is only busy at thousands per step
    data: DataConfig = DataConfig(n_train=409_600, n_val=8192, batch_size=4096)
    phases: tuple[PhaseConfig, ...] = Field(default_factory=_default_training_phases, min_length=1, max_length=8)
    log_every_steps: int = Field(10, ge=1, le=100_000, description="sampled per-step metrics")
    debug: DebugConfig = DebugConfig()
    init_from: CheckpointSource | None = Field(
        None, description="start from the weights of this checkpoint (`{job_id, checkpoint}` of an earlier job, or "
        "`{upload_id}`) instead of a random initialization: continue or fine-tune a run. The checkpoint's system "
        "and model must match this config's; the optimizer and the schedule start afresh with `phases`")

    @model_validator(mode="after")
    def _check_run(self) -> TrainingJobConfig:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        s = self.system
        per_scene = 8 * (s.n_snapshots * s.n_bs_antennas + s.n_bs_antennas * s.n_ris + s.n_snapshots * s.n_ris)
        if per_scene * self.data.batch_size > MAX_BATCH_INPUT_BYTES:
            raise ValueError(
                f"data.batch_size ({self.data.batch_size}) makes one batch's inputs "
                f"{per_scene * self.data.batch_size / 2**30:.1f} GiB > {MAX_BATCH_INPUT_BYTES / 2**30:.0f} GiB; "
                "lower data.batch_size or the system size"
            )
        if self.data.n_val * per_scene > 4 * MAX_BATCH_INPUT_BYTES:
            raise ValueError("data.n_val is too large for this system size; lower data.n_val")
        return self

    @property
    def total_steps(self) -> int:
        return sum(p.epochs for p in self.phases) * self.data.n_batches_per_epoch

    def sha256(self) -> str:
        """sha256 of the canonical JSON of this config (stored in checkpoints and on the job row)."""
        return config_sha256(self.model_dump(mode="json", by_alias=False))


class DiagnosticChecksConfig(_Frozen):
    """Budgets of the diagnostic's own probes; they run after training."""

    overfit_scenes: int = Field(64, ge=8, le=4096, description="scenes the overfit probe must fit")
    overfit_steps: int = Field(200, ge=0, le=20_000, description="optimizer steps of the overfit probe (0 = off)")
    overfit_lr: float = Field(
        1e-3, gt=0.0, le=1.0,
        description="AdamW learning rate of the probe, which starts from the trained weights; larger rates fit the "
        "scenes more slowly or not at all (1e-2 does not fit 64 scenes in 200 steps of the default diagnostic)",
    )
    identifiability_scenes: int = Field(1000, ge=50, le=50_000, description="scenes for the identifiability check")
    leakage_train_batches: int = Field(8, ge=1, le=1000, description="train batches hashed for the leakage check")


class DiagnosticJobConfig(TrainingJobConfig):
    """The reference diagnostic as a job (SCIENCE.md, "Losses and phases"): k_only, lam_K 1.5, lam_aux 0.5, lam_cov 0.1,
    10 epochs, 5000 train / 1000 val scenes, batch 64; then the automatic checks."""

    data: DataConfig = DataConfig(n_train=5000, n_val=1000, batch_size=64)
    checks: DiagnosticChecksConfig = DiagnosticChecksConfig()
    phases: tuple[PhaseConfig, ...] = Field(default_factory=_reference_diagnostic_phases, min_length=1, max_length=8)


def quickstart_diagnostic() -> DiagnosticJobConfig:
    """A diagnostic small enough to finish in about two minutes on a 2-core CPU (README's first job)."""
    phase = _reference_diagnostic_phases()[0].model_copy(update={"epochs": 3})
    # about 1 s per step on a 2-core CPU, for training and for the overfit probe alike
    return DiagnosticJobConfig(data=DataConfig(n_train=768, n_val=256, batch_size=64), phases=(phase,),
                               checks=DiagnosticChecksConfig(overfit_steps=25, identifiability_scenes=300))
