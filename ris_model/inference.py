"""The public inference API: `load_estimator(checkpoint_path, device=None)` → `Estimator`
(SCIENCE.md, "Estimators and evaluation").

Owns load_estimator, Estimator and the per-scene prediction dicts. A checkpoint is loaded only through
`ris_model.train.checkpoint.load_checkpoint` (weights_only=True: a file holding code is refused, never run), and the
network gets the checkpoint's `eval_model` weights, the ones that were validated (SCIENCE.md, "The trainer"). Imports
torch, numpy, api_schemas and ris_model; never Celery, HTTP or SQL.

    est = ris_model.load_estimator("final.pt")
    scenes = est.predict(y, H, codes)   # y [B, L, M], H [B, M, N], codes [B, L, N], complex, numpy or torch
    scenes[0]  # {"k": 2, "sources": [{"azimuth_deg": 12.1, "elevation_deg": -3.0, "range_m": 2.4}, ...]}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from api_schemas import DiagnosticJobConfig, SystemConfig, TrainingJobConfig
from ris_model.errors import CheckpointError
from ris_model.estimators.grid import SearchGrid, SourceEstimate
from ris_model.estimators.order import select_order
from ris_model.estimators.polish import polish as ml_polish
from ris_model.model.network import ModelOutput, RisNet
from ris_model.train import checkpoint as ckpt

#: The checkpoint key of the validated weights (the EMA's when the phase kept one; SCIENCE.md, "The trainer").
EVAL_MODEL_KEY = "eval_model"
DEFAULT_BATCH_SIZE = 256


class SourcePrediction(TypedDict):
    azimuth_deg: float
    elevation_deg: float
    range_m: float


class ScenePrediction(TypedDict):
    """One scene's estimate: `k` sources, and one dict per source (best existence logit first)."""

    k: int
    sources: list[SourcePrediction]


ArrayLike = np.ndarray | Tensor


class Estimator:
    """A trained RisNet in eval mode, with the system it was trained for.

    Attributes:
        config: the checkpoint's TrainingJobConfig (or DiagnosticJobConfig).
        system: `config.system`: the shapes L, M, N and the field of view the model expects.
        device: where the model runs.
        batch_size: scenes per forward pass (inputs are split internally).
        polish: whether `predict`/`estimate` refine the network's positions by a local maximum-likelihood
            search on the measurements (`ris_model.estimators.polish`).
        order_test: whether, when the caller gives `snr_db` (and `polish` is on), the count is chosen by a
            penalized likelihood over every count, each fit polished, with the K-head's posterior as a prior
            term (`ris_model.estimators.order`; the noise level is what SOMP's stopping rule gets); without
            `snr_db` the count is the network's. Every count's fit is one batched Levenberg–Marquardt problem
            with global moves (`ris_model.estimators.polish.refine_fits`).
    """

    def __init__(self, model: RisNet, config: TrainingJobConfig, *, device: torch.device,
                 batch_size: int = DEFAULT_BATCH_SIZE, source: dict[str, Any] | None = None,
                 polish: bool = True, order_test: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.config, self.system, self.device, self.batch_size = config, config.system, device, batch_size
        self.source = source or {}  # where the weights came from (path, phase, step), for reports
        self.polish = polish
        self.order_test = order_test
        self._grid: SearchGrid | None = None

    def predict(self, y: ArrayLike, H: ArrayLike, codes: ArrayLike, snr_db: ArrayLike | float | None = None
                ) -> list[ScenePrediction]:
        """Source count and positions of B scenes.

        Args:
            y: complex [B, L, M] measurements; axis 1 is the snapshot axis (one RIS code per snapshot).
            H: complex [B, M, N] BS→RIS channel.
            codes: complex [B, L, N] RIS codes, one row per snapshot.
            snr_db: None, a float, or real [B] dB (the data contract's definition). The network infers the noise
                level from y (SCIENCE.md, "The network"); when given, the count is chosen by a penalized likelihood with
                it (`order_test`), as SOMP's stopping rule uses it.
            numpy arrays or torch tensors, complex64 or complex128 (computed in complex64).

        Returns:
            One ScenePrediction per scene: `k` (int, 1..K_MAX) and `sources`, k dicts with `azimuth_deg`,
            `elevation_deg` (degrees) and `range_m` (meters).

        Raises:
            TypeError: an input that is not complex. ValueError: shapes that do not match the system
            (expected vs got in the message), or non-finite values.
        """
        est = self.estimate(y, H, codes, snr_db)
        k = est.k.tolist()
        az, el, rng = (torch.rad2deg(est.azimuth).tolist(), torch.rad2deg(est.elevation).tolist(),
                       est.range_m.tolist())
        return [
            ScenePrediction(k=int(k[b]), sources=[
                SourcePrediction(azimuth_deg=float(az[b][s]), elevation_deg=float(el[b][s]), range_m=float(rng[b][s]))
                for s in range(int(k[b]))
            ])
            for b in range(len(k))
        ]

    @torch.inference_mode()
    def estimate(self, y: ArrayLike, H: ArrayLike, codes: ArrayLike, snr_db: ArrayLike | float | None = None,
                 *, polish: bool | None = None) -> SourceEstimate:
        """As `predict`, as tensors: a SourceEstimate on the CPU with K_MAX slots, the first k valid (radians,
        meters, float64), ordered by existence logit. Same arguments and errors as `predict`; `polish`
        overrides the estimator's setting for this call."""
        y_t, H_t, codes_t = self._check_inputs(y, H, codes, snr_db)
        snr = None if snr_db is None else torch.as_tensor(snr_db, dtype=torch.float64).expand(y_t.shape[0])
        parts = []
        for start in range(0, y_t.shape[0], self.batch_size):
            sl = slice(start, start + self.batch_size)
            yb, Hb, cb = y_t[sl].to(self.device), H_t[sl].to(self.device), codes_t[sl].to(self.device)
            est = decode_output(self.model(yb, Hb, cb))
            if self.polish if polish is None else polish:
                if snr is not None and self.order_test:
                    est = self._order(yb, Hb, cb, est, snr[sl])
                else:
                    est = ml_polish(yb, Hb, cb, est, self._search_grid(), chunk_size=self._polish_chunk())
            parts.append(est)
        return _cat(parts, self.system.k_max)

    def refine(self, y: ArrayLike, H: ArrayLike, codes: ArrayLike, estimate: SourceEstimate) -> SourceEstimate:
        """The ML polish alone, applied to an earlier `estimate(..., polish=False)` of the same scenes."""
        y_t, H_t, codes_t = self._check_inputs(y, H, codes, None)
        with torch.inference_mode():
            return ml_polish(y_t.to(self.device), H_t.to(self.device), codes_t.to(self.device), estimate,
                             self._search_grid(), chunk_size=self._polish_chunk())

    def refine_count(self, y: ArrayLike, H: ArrayLike, codes: ArrayLike, estimate: SourceEstimate,
                     snr_db: ArrayLike | float) -> SourceEstimate:
        """The count selection and polish (see `order_test`), applied to an earlier `estimate(...,
        polish=False)` of the same scenes: what `estimate(..., snr_db)` returns."""
        y_t, H_t, codes_t = self._check_inputs(y, H, codes, snr_db)
        snr = torch.as_tensor(snr_db, dtype=torch.float64).expand(y_t.shape[0])
        with torch.inference_mode():
            return self._order(y_t.to(self.device), H_t.to(self.device), codes_t.to(self.device), estimate, snr)

    def _order(self, y: Tensor, H: Tensor, codes: Tensor, estimate: SourceEstimate, snr_db: Tensor
               ) -> SourceEstimate:
        out = select_order(y, H, codes, estimate, self._search_grid(), snr_db.to(y.device),
                           chunk_size=self._polish_chunk())
        return out.map(Tensor.cpu)

    def _polish_chunk(self) -> int:
        # ~12 MB a scene for the count selection (grid dictionary, trials); a GPU takes a whole batch at once
        return 2048 if self.device.type == "cuda" else 64

    def _search_grid(self) -> SearchGrid:
        """The polish's search scale: a grid of the network's own look-grid size over the system's FOV."""
        if self._grid is None:
            m = self.config.model
            self._grid = SearchGrid.uniform(self.system, m.grid_azimuth, m.grid_elevation, m.grid_inv_range,
                                            device=self.device)
        return self._grid

    def _check_inputs(self, y: ArrayLike, H: ArrayLike, codes: ArrayLike, snr_db: ArrayLike | float | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        s = self.system
        L, M, N = s.n_snapshots, s.n_bs_antennas, s.n_ris
        y_t, H_t, codes_t = (_as_complex(v, name) for v, name in ((y, "y"), (H, "H"), (codes, "codes")))
        B = y_t.shape[0] if y_t.dim() == 3 else None
        for name, t, expected in (("y", y_t, ("B", L, M)), ("H", H_t, ("B", M, N)), ("codes", codes_t, ("B", L, N))):
            got = tuple(t.shape)
            if len(got) != 3 or got[1:] != expected[1:] or (B is not None and got[0] != B):
                want = f"[{B if B is not None else 'B'}, {expected[1]}, {expected[2]}]"
                raise ValueError(f"{name}: expected shape {want} ([B, L, M], [B, M, N], [B, L, N] with L = {L}, "
                                 f"M = {M}, N = {N} of the checkpoint's system), got {list(got)}")
            if not bool(torch.isfinite(torch.view_as_real(t)).all()):
                raise ValueError(f"{name} holds non-finite values")
        if snr_db is not None:
            snr = torch.as_tensor(snr_db)
            if snr.dim() > 1 or (snr.dim() == 1 and snr.shape[0] != B) or snr.is_complex():
                raise ValueError(f"snr_db: expected a real scalar or shape [{B}], got {list(snr.shape)}")
        return y_t, H_t, codes_t


def decode_output(out: ModelOutput) -> SourceEstimate:
    """K̂ = argmax of the K logits (class i ↔ K = i+1); the sources are the K̂ slots with the highest existence
    logits, best first. Returns a SourceEstimate on the CPU (float64 radians / meters), with the K-head's
    log-probabilities as its count posterior."""
    k = out.k_logits.argmax(-1) + 1  # [B]
    order = out.exist_logits.argsort(-1, descending=True)  # [B, K_MAX]
    az, el, rng = (t.gather(1, order).double().cpu() for t in (out.azimuth, out.elevation, out.range_m))
    k = k.cpu()
    valid = torch.arange(order.shape[1]) < k[:, None]
    return SourceEstimate(k=k, azimuth=az, elevation=el, range_m=rng, valid=valid,
                          k_log_prob=out.k_logits.double().log_softmax(-1).cpu())


def _cat(parts: list[SourceEstimate], k_max: int) -> SourceEstimate:
    if not parts:
        empty = torch.zeros(0, k_max, dtype=torch.float64)
        return SourceEstimate(k=torch.zeros(0, dtype=torch.long), azimuth=empty, elevation=empty, range_m=empty,
                              valid=torch.zeros(0, k_max, dtype=torch.bool))
    return SourceEstimate.cat(parts)


def _as_complex(value: ArrayLike, name: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(value).__name__}")
    if not value.is_complex():
        raise TypeError(f"{name}: expected complex64 or complex128, got {value.dtype}")
    return value.detach().to(torch.complex64)


def load_estimator(checkpoint_path: str | Path, device: str | torch.device | None = None, *,
                   batch_size: int = DEFAULT_BATCH_SIZE, polish: bool = True, order_test: bool = True) -> Estimator:
    """Load a checkpoint written by this package's trainer as an Estimator (the public API;
    SCIENCE.md, "Estimators and evaluation").

    Args:
        checkpoint_path: a `.pt` file (any checkpoint of a job: `final`, a phase's, a `-last`).
        device: "cpu", "cuda", "cuda:N", a torch.device, or None (CUDA when available).
        batch_size: scenes per forward pass.
        polish: refine the network's positions by a local ML search on the measurements (see Estimator).
        order_test: choose the count by penalized likelihood when `snr_db` is given (see Estimator).

    Returns:
        An Estimator in eval mode with the checkpoint's validated (`eval_model`) weights.

    Raises:
        CheckpointError: the file is missing, corrupt, foreign, holds code (refused by weights_only loading,
            never executed), or its config or weights do not build the network.
    """
    path = Path(checkpoint_path)
    state = ckpt.load_checkpoint(path, map_location="cpu")
    config = _config_of(state, path)
    weights = state.get(EVAL_MODEL_KEY)
    if weights is None:  # older checkpoints: pick by the eval_weights marker
        use_ema = state.get(ckpt.EVAL_WEIGHTS_KEY) == "ema" and state.get(ckpt.EMA_KEY) is not None
        weights = state[ckpt.EMA_KEY] if use_ema else state[ckpt.MODEL_KEY]
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise CheckpointError(f"checkpoint {path.name}: '{EVAL_MODEL_KEY}' is not a dict of tensors")
    with torch.random.fork_rng(devices=[]):  # building the net draws init weights: leave the caller's RNG alone
        model = RisNet(config.system, config.model)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path.name}: weights do not fit the network of its config "
                              f"({str(exc).splitlines()[0][:300]})") from exc
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    position = state.get(ckpt.POSITION_KEY) or {}
    source = {"path": str(path), "kind": str(state.get(ckpt.KIND_KEY, "")),
              "phase": str(position.get("phase", "")), "global_step": int(position.get("global_step", 0)),
              "config_sha256": str(state.get(ckpt.CONFIG_SHA_KEY, ""))}
    return Estimator(model, config, device=dev, batch_size=batch_size, source=source, polish=polish,
                     order_test=order_test)


def _config_of(state: dict[str, Any], path: Path) -> TrainingJobConfig:
    raw = state.get(ckpt.CONFIG_KEY)
    model_cls = DiagnosticJobConfig if state.get(ckpt.KIND_KEY) == "diagnostic" else TrainingJobConfig
    try:
        return model_cls.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointError(f"checkpoint {path.name}: its config is not valid for this version "
                              f"({exc.error_count()} errors, first: {exc.errors()[0]['msg']})") from exc


def fov_contains(system: SystemConfig, azimuth_deg: float, elevation_deg: float, range_m: float) -> bool:
    """True if a prediction lies in the system's field of view (with a float tolerance)."""
    eps = 1e-6
    return (abs(azimuth_deg) <= system.azimuth_max_deg + eps and abs(elevation_deg) <= system.elevation_max_deg + eps
            and system.range_min_m - eps <= range_m <= system.range_max_m + eps and math.isfinite(range_m))
