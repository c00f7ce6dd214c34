"""The phase trainer (SCIENCE.md, "Losses and phases", "The trainer").

Owns Trainer and FitResult. Reads top to bottom: fit → phases → _train_epoch → _train_step, _validate,
_save_checkpoint. Knows nothing of Celery or HTTP: everything leaves through the MetricSink.
Rules pinned by tests: one optimizer step per batch; the LR is a function of the step and is set every step;
the epoch loss is the mean over the epoch's finite batches; validated weights == saved weights (EMA);
non-finite steps are skipped, counted by cause and attributed, never zeroed (no nan_to_num).

Data-parallel (a DistContext of world_size W > 1, ris_model.train.distributed): every rank runs this same
loop on its own share of each global batch, with the model wrapped in DistributedDataParallel (gradients
averaged over the ranks, eager path only: no CUDA-graph replay). Each step all-reduces one small vector (the
ranks' losses, non-finite flags, correct K counts and scene counts), so the skip decision, the epoch's totals
and the sampled losses are the same on every rank; rank 0's stop decision is shared before each step.
Rank 0 alone validates, writes checkpoints and sends metric points.
"""

from __future__ import annotations

import gc
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from api_schemas import CheckpointInfo, MetricPoint, PhaseConfig, TrainingJobConfig
from api_schemas import metrics as keys
from ris_model.accel.graphed_step import GraphedLoss
from ris_model.errors import CheckpointError, NonFiniteAbort, NonFiniteAttribution
from ris_model.losses import LossResult, compute_loss
from ris_model.metrics import CountingTally, GeometryTally
from ris_model.model.network import ModelOutput, RisNet, k_from_logits
from ris_model.scenes import SceneBatch, SceneSource, check_shardable
from ris_model.train import checkpoint as ckpt
from ris_model.train.distributed import SINGLE, DistContext, StopReason
from ris_model.train.hooks import NO_HOOKS, StepHooks
from ris_model.train.sinks import MetricSink


def never_stop() -> StopReason | None:
    return None


@dataclass
class FitResult:
    stopped: StopReason | None
    global_step: int
    nonfinite_total: int
    final_checkpoint: CheckpointInfo | None
    last_checkpoint: CheckpointInfo | None
    never_updated: list[str] = field(default_factory=list)  # parameters that never received a gradient
    report: dict[str, Any] | None = None


@dataclass
class _Position:
    phase_index: int = 0
    epoch: int = 0  # 0-based epoch within the phase
    batch: int = 0  # next batch of the epoch
    global_step: int = 0  # batches processed so far in the run (including skipped ones)


@dataclass
class _EpochStats:
    loss_sum: float | Tensor = 0.0  # a device tensor during the epoch (no per-step host sync)
    n_finite: int = 0
    n_batches: int = 0
    n_optimizer_steps: int = 0
    n_skipped: int = 0
    n_samples: int = 0
    k_correct: int | Tensor = 0


class Trainer:
    def __init__(self, config: TrainingJobConfig, model: RisNet, sink: MetricSink, device: torch.device | str,
                 *, checkpoint_dir: Path, checkpoint_interval_s: float | None = None,
                 kind: str = "training", hooks: StepHooks = NO_HOOKS, dist: DistContext = SINGLE) -> None:
        self.config, self.model, self.sink = config, model.to(device), sink
        self.device = torch.device(device)
        self.checkpoint_dir, self.checkpoint_interval_s, self.kind = checkpoint_dir, checkpoint_interval_s, kind
        self.hooks = hooks
        self.dist = dist
        if dist.distributed:
            check_shardable(config.data.n_train, config.data.batch_size, dist.world_size)
        self.scenes = hooks.attach(self.model, SceneSource(config.system, config.data, self.device,
                                                           rank=dist.rank, world_size=dist.world_size))
        self.ddp: nn.Module | None = None  # the DistributedDataParallel wrapper of the current phase (W > 1)
        self.graphed = GraphedLoss(self.model, config.system)  # CUDA only; see ris_model.accel.graphed_step
        self.group_of = {id(p): g for g, ps in model.param_groups().items() for p in ps}
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.pos = _Position()
        self.nonfinite_total = 0
        self.consecutive_nonfinite = 0
        self.updated: set[str] = set()  # parameters that got a finite gradient in a taken step
        self.last_checkpoint: CheckpointInfo | None = None
        self.last_confusion: list[list[int]] | None = None  # of the last validation, true × predicted
        self._written: dict[str, Path] = {}  # checkpoint name → the file this run last wrote for it
        self.optimizer: torch.optim.Optimizer | None = None
        self.ema: dict[str, Tensor] | None = None
        self.epoch_stats = _EpochStats()
        self.epoch_start: dict[str, Tensor] = {}
        self._last_interval_save = time.monotonic()
        self._resume_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- the run
    def fit(self, should_stop: Callable[[], StopReason | None] = never_stop,
            resume_from: Path | None = None) -> FitResult:
        if resume_from is not None:
            self._load_resume(resume_from)
        phases = self.config.phases
        while self.pos.phase_index < len(phases):
            phase = phases[self.pos.phase_index]
            self._setup_phase(phase)
            # the phase shows in the job's progress from its first step, not from its first sampled point
            self.sink.log_metrics([MetricPoint(phase=phase.name, epoch=self.pos.epoch + 1, step=self.pos.global_step,
                                               key=keys.PROGRESS_FRACTION, value=self._progress())])
            while self.pos.epoch < phase.epochs:
                # one epoch: train (may stop between steps), validate, checkpoint
                stopped = self._train_epoch(phase, should_stop)
                if stopped is not None:
                    self._save_checkpoint(phase, f"{phase.name}-last")
                    return self._result(stopped, final=None)
                self._end_epoch(phase)
            # the phase's final weights are the validated (EMA) ones; the next phase starts from them
            self._apply_eval_weights()
            self.pos = _Position(self.pos.phase_index + 1, 0, 0, self.pos.global_step)
            self._save_checkpoint(phase, phase.name)
        if self.optimizer is None:  # resumed from the last phase's end checkpoint
            self._setup_phase(phases[-1])
        final = self._save_checkpoint(phases[-1], "final")
        return self._result(None, final=final)

    def result_so_far(self) -> FitResult:
        """What the run has done until now (for a report on an aborted run)."""
        return self._result(None, final=None)

    def _result(self, stopped: StopReason | None, final: CheckpointInfo | None) -> FitResult:
        all_names = [n for n, p in self.model.named_parameters()]
        return FitResult(
            stopped=stopped, global_step=self.pos.global_step, nonfinite_total=self.nonfinite_total,
            final_checkpoint=final, last_checkpoint=self.last_checkpoint,
            never_updated=[n for n in all_names if n not in self.updated],
        )

    def _setup_phase(self, phase: PhaseConfig) -> None:
        """Freeze the phase's groups, build its optimizer and EMA; restore them when resuming into it."""
        frozen = set(phase.frozen_groups)
        for group, params in self.model.param_groups().items():
            for p in params:
                p.requires_grad_(group not in frozen)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.dist.distributed:  # DDP reduces the gradients of the parameters that train in this phase
            self.ddp = None
            gc.collect()  # the previous phase's wrapper must be gone (with its gradient hooks) before the next
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)  # a phase's loss need not reach every trainable parameter
        # fused on CUDA: one kernel for every parameter instead of a few per tensor
        self.optimizer = torch.optim.AdamW(trainable, lr=phase.lr, weight_decay=phase.weight_decay,
                                           fused=self.device.type == "cuda" and bool(trainable))
        self.model.zero_grad(set_to_none=True)
        self.ema = ({n: p.detach().clone() for n, p in self.model.state_dict().items()}
                    if phase.ema_decay is not None else None)
        state, self._resume_state = self._resume_state, None
        if state is not None and state[ckpt.POSITION_KEY].get(ckpt.OPTIMIZER_PHASE_KEY) == phase.name:
            self.optimizer.load_state_dict(state[ckpt.OPTIMIZER_KEY])
            if self.ema is not None and state.get(ckpt.EMA_KEY) is not None:
                self.ema = {k: v.to(self.device) for k, v in state[ckpt.EMA_KEY].items()}
        if self.pos.batch == 0:
            self.epoch_start = self._snapshot()

    # ---------------------------------------------------------------- an epoch
    def _train_epoch(self, phase: PhaseConfig, should_stop: Callable[[], StopReason | None]) -> StopReason | None:
        n_batches = self.scenes.n_batches
        data_epoch = sum(p.epochs for p in self.config.phases[: self.pos.phase_index]) + self.pos.epoch
        started, stats_before = time.perf_counter(), self.epoch_stats.n_samples
        # the next batch is generated while the GPU runs this step's backward (Trainer._train_step's `prefetch`)
        batches = self.scenes.train_batches(data_epoch, start=self.pos.batch)
        upcoming: list[SceneBatch | None] = [next(batches, None)]

        def prefetch() -> None:
            upcoming[0] = next(batches, None)

        while (batch := upcoming[0]) is not None:
            upcoming[0] = None
            # cooperative stop, polled between steps (rank 0 decides for every rank)
            asked = should_stop() if self.dist.is_main and self.hooks.polls_stop() else None
            reason = self.dist.agree_stop(asked, self.device)
            if reason is not None:
                return reason
            # LR is a function of the step within the phase (set every step)
            step_in_phase = self.pos.epoch * n_batches + self.pos.batch
            lr = lr_at(phase, step_in_phase, phase.epochs * n_batches)
            for g in self.optimizer.param_groups:  # type: ignore[union-attr]
                g["lr"] = lr
            # forward / backward / (skip or step)
            take_step = self.hooks.takes_optimizer_step(self.pos.batch, n_batches)
            loss, res = self._train_step(phase, batch, take_step=take_step, prefetch=prefetch)
            self.pos.batch += 1
            self.pos.global_step += 1
            if self.pos.global_step % self.config.log_every_steps == 0:
                self._log_step(phase, loss, res, lr)
            self.hooks.after_step(self.pos.global_step)
            if self.dist.is_main:
                self._maybe_interval_checkpoint(phase)
        elapsed = time.perf_counter() - started
        self._samples_per_s = (self.epoch_stats.n_samples - stats_before) / max(elapsed, 1e-9)
        return None

    def _train_step(self, phase: PhaseConfig, batch: SceneBatch, *, take_step: bool,
                    prefetch: Callable[[], None] | None = None) -> tuple[Tensor, LossResult]:
        """One batch: forward, loss, backward; then one optimizer step, or a counted, attributed skip.
        `prefetch` (the next batch's generation) is called once the backward is queued, before the step's host
        sync, so that the CPU issues it while the GPU is still busy."""
        model, opt = self.model, self.optimizer
        assert opt is not None  # set by _setup_phase (internal invariant, not input)
        self.hooks.before_step(self.pos.global_step)
        model.train()
        forward = self.ddp if self.ddp is not None else model
        graphed = (self.graphed.run(batch, phase.loss_weights, autocast=self._amp(phase))
                   if self._graphable(batch) else None)
        if graphed is not None:  # forward + loss replayed as a CUDA graph; backward() replays its backward graph
            res, k_logits = graphed
        else:
            with self._autocast(phase):
                out = forward(batch.y, batch.H, batch.codes, batch.snr_db)
                res = self._loss(out, batch, phase)
            k_logits = out.k_logits
        stats = self.epoch_stats
        stats.n_batches += 1
        total = res.total
        if total.requires_grad:
            total.backward()  # a non-finite loss gives non-finite gradients; the step is skipped below
        if prefetch is not None:
            prefetch()
        trainable = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        max_norm = phase.grad_clip_norm if phase.grad_clip_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm) if trainable else total.detach() * 0
        loss, loss_finite, k_correct, n_samples = self._step_totals(total, k_logits, batch)
        # the step's only host sync: is everything finite? (the gradients are the same on every rank: averaged)
        if not bool(loss_finite & torch.isfinite(grad_norm)):
            stats.n_samples += n_samples
            self._skip(phase, batch, res, cause="grad" if bool(loss_finite) else "loss")
            return loss, res
        self.consecutive_nonfinite = 0
        stats.loss_sum = stats.loss_sum + loss.double()  # device-side sums, read at the epoch end
        stats.n_finite += 1
        stats.n_samples += n_samples
        stats.k_correct = stats.k_correct + k_correct
        if take_step:
            self._mark_updated()
            opt.step()
            opt.zero_grad(set_to_none=True)
            stats.n_optimizer_steps += 1
            self.hooks.after_optimizer_step(self.model)
            self._update_ema(phase)
        self._last_grad_norm = grad_norm
        return loss, res

    def _step_totals(self, total: Tensor, k_logits: Tensor, batch: SceneBatch) -> tuple[Tensor, Tensor, Tensor, int]:
        """The step's loss (mean over the ranks), whether every rank's loss is finite, the correct K counts and
        the scenes over all ranks: one all-reduce of one small vector (none on a single process)."""
        correct = (k_from_logits(k_logits) == batch.k).sum()
        if not self.dist.distributed:
            return total.detach(), torch.isfinite(total), correct, len(batch)
        shared = torch.stack([total.detach().double(), (~torch.isfinite(total)).double(), correct.double(),
                              torch.tensor(float(len(batch)), dtype=torch.float64, device=total.device)])
        self.dist.sum_(shared)
        loss = (shared[0] / self.dist.world_size).to(total.dtype)
        return loss, shared[1] == 0, shared[2], int(shared[3].item())

    def _graphable(self, batch: SceneBatch) -> bool:
        """The CUDA-graph path runs the plain loss: not where the hooks change this step, and only at the
        configured batch size (a short last batch runs eagerly rather than capturing its own)."""
        return (self.device.type == "cuda" and len(batch) == self.config.data.batch_size and self.ddp is None
                and not self.hooks.runs_eagerly(self.pos.global_step)
                and any(p.requires_grad for p in self.model.parameters()))

    def _loss(self, out: ModelOutput, batch: SceneBatch, phase: PhaseConfig) -> LossResult:
        res = compute_loss(out, batch, phase.loss_weights, self.config.system)
        return self.hooks.loss(res, out, batch, phase.loss_weights, self.pos.global_step)

    # ---------------------------------------------------------------- non-finite guard
    def _skip(self, phase: PhaseConfig, batch: SceneBatch, res: LossResult, *, cause: str) -> None:
        """Count and attribute a skipped step; abort after too many in a row (SCIENCE.md, "The trainer")."""
        assert self.optimizer is not None
        weights = phase.loss_weights.model_dump()
        active = {n: t for n, t in res.terms.items() if weights.get(f"lam_{n}", 1.0) > 0}
        terms = self._any_rank([n for n, t in active.items() if not bool(torch.isfinite(t))], list(active))
        groups: list[str] = []
        if cause == "grad":
            groups = sorted({self.group_of[id(p)] for p in self.model.parameters()
                             if p.grad is not None and not bool(torch.isfinite(p.grad).all())})
            terms = self._any_rank(self._attribute_grad_terms(phase, batch), list(active))
            if phase.amp and self.device.type == "cuda" and not terms:
                cause = "amp_overflow"
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_total += 1
        self.consecutive_nonfinite += 1
        self.epoch_stats.n_skipped += 1
        # the skipped batch is step global_step + 1, as in the sampled train/* points of that batch
        where: dict[str, Any] = dict(phase=phase.name, epoch=self.pos.epoch + 1, step=self.pos.global_step + 1)
        points = [MetricPoint(**where, key=keys.NONFINITE_CAUSE_PREFIX + cause, value=1.0)]
        points += [MetricPoint(**where, key=keys.NONFINITE_TERM_PREFIX + t, value=1.0) for t in terms]
        points += [MetricPoint(**where, key=keys.NONFINITE_GROUP_PREFIX + g, value=1.0) for g in groups]
        self.sink.log_metrics(points)
        if self.consecutive_nonfinite >= phase.max_consecutive_nonfinite:
            attribution = NonFiniteAttribution(**where, cause=cause, loss_terms=terms, param_groups=groups)
            raise NonFiniteAbort(
                f"{self.consecutive_nonfinite} consecutive non-finite steps in phase {phase.name!r} "
                f"(last at step {self.pos.global_step}: cause {cause}, loss terms {terms or '-'}, "
                f"parameter groups {groups or '-'})", attribution)

    def _any_rank(self, names: list[str], among: list[str]) -> list[str]:
        """The names in `among` that some rank listed (this rank's own `names` on a single process)."""
        if not self.dist.distributed or not among:
            return names
        flags = torch.tensor([float(n in names) for n in among], device=self.device)
        self.dist.sum_(flags)
        return [n for n, f in zip(among, flags.tolist(), strict=True) if f > 0]

    def _attribute_grad_terms(self, phase: PhaseConfig, batch: SceneBatch) -> list[str]:
        """Which weighted loss terms give non-finite gradients: recompute in fp32, one backward per term.
        Runs only on a skipped step, so it costs nothing on the normal path."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        out = self.model(batch.y, batch.H, batch.codes, batch.snr_db)
        res = self._loss(out, batch, phase)
        weights = phase.loss_weights.model_dump()
        bad = []
        for name, term in res.terms.items():
            if weights.get(f"lam_{name}", 1.0) <= 0 or not term.requires_grad:
                continue
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
                bad.append(name)
        return bad

    # ---------------------------------------------------------------- epoch end
    def _end_epoch(self, phase: PhaseConfig) -> None:
        stats = self.epoch_stats
        if not self.dist.is_main:  # rank 0 validates, reports and checkpoints for every rank
            self.pos.epoch += 1
            self.pos.batch = 0
            self.epoch_stats = _EpochStats()
            return
        val = self._validate(phase)
        delta_total, delta_groups = self._delta_params()
        where: dict[str, Any] = dict(phase=phase.name, epoch=self.pos.epoch + 1, step=self.pos.global_step)
        values = {
            keys.TRAIN_EPOCH_LOSS: float(stats.loss_sum) / max(stats.n_finite, 1),
            keys.TRAIN_K_ACC: float(stats.k_correct) / max(stats.n_samples, 1),
            keys.TRAIN_BATCHES: float(stats.n_batches),
            keys.TRAIN_OPTIMIZER_STEPS: float(stats.n_optimizer_steps),
            keys.TRAIN_NONFINITE_SKIPPED: float(stats.n_skipped),
            keys.TRAIN_SAMPLES_PER_S: getattr(self, "_samples_per_s", 0.0),
            keys.TRAIN_DELTA_PARAM: delta_total,
            keys.PROGRESS_FRACTION: self._progress(),
            **{keys.TRAIN_DELTA_PARAM_GROUP_PREFIX + g: v for g, v in delta_groups.items()},
            **val,
        }
        self.sink.log_metrics([MetricPoint(**where, key=k, value=float(v)) for k, v in values.items()])
        self.pos.epoch += 1
        self.pos.batch = 0
        self.epoch_stats = _EpochStats()
        self._save_checkpoint(phase, f"{phase.name}-last")
        self.epoch_start = self._snapshot()  # rank 0 only: the other ranks report no parameter deltas

    @torch.no_grad()
    def _validate(self, phase: PhaseConfig) -> dict[str, float]:
        """Val loss, K accuracy/under/over, matched RMSE (deg, m), covariance NMSE — on the weights that
        will be saved as the phase's result (the EMA weights when EMA is on)."""
        counting = CountingTally(self.config.system.k_max)
        geometry = GeometryTally()
        by_bin = {name: (CountingTally(self.config.system.k_max), GeometryTally()) for *_, name in keys.SNR_BINS_DB}
        loss_sum, nmse_sum, n = 0.0, 0.0, 0
        with self._eval_weights():
            self.model.eval()
            for batch in self.scenes.val_batches():
                with self._autocast(phase):
                    out = self.model(batch.y, batch.H, batch.codes, batch.snr_db)
                    res = compute_loss(out, batch, phase.loss_weights, self.config.system)
                k_pred = k_from_logits(out.k_logits)
                counting.update(batch.k, k_pred)
                a = res.assignment
                errors = (out.azimuth.gather(1, a).float() - batch.azimuth,
                          out.elevation.gather(1, a).float() - batch.elevation,
                          out.range_m.gather(1, a).float() - batch.range_m)
                geometry.update(*errors, batch.mask)
                for lo, hi, name in keys.SNR_BINS_DB:
                    sel = (batch.snr_db >= lo) & (batch.snr_db < hi)
                    by_bin[name][0].update(batch.k[sel], k_pred[sel])
                    by_bin[name][1].update(errors[0][sel], errors[1][sel], errors[2][sel], batch.mask[sel])
                loss_sum += float(res.total) * len(batch)
                nmse_sum += float(res.terms["cov"]) * len(batch)
                n += len(batch)
        rates, rmse = counting.rates(), geometry.rmse()
        self.last_confusion = counting.confusion
        binned: dict[str, float] = {}
        for name, (c, g) in by_bin.items():
            if c.n == 0:
                continue
            binned[keys.VAL_K_ACC_BIN_PREFIX + name] = c.rates()["k_acc"]
            for prefix, value in zip(keys.VAL_RMSE_BIN_KEYS, g.rmse().values(), strict=True):
                binned[prefix + name] = value
        return binned | {
            keys.VAL_LOSS: loss_sum / n, keys.VAL_K_ACC: rates["k_acc"], keys.VAL_K_UNDER: rates["k_under"],
            keys.VAL_K_OVER: rates["k_over"], keys.VAL_RMSE_AZIMUTH_DEG: rmse["rmse_azimuth_deg"],
            keys.VAL_RMSE_ELEVATION_DEG: rmse["rmse_elevation_deg"], keys.VAL_RMSE_RANGE_M: rmse["rmse_range_m"],
            keys.VAL_COV_NMSE: nmse_sum / n,
        }

    # ---------------------------------------------------------------- helpers
    def _log_step(self, phase: PhaseConfig, loss: Tensor, res: LossResult, lr: float) -> None:
        """Sampled per-step points; the only place (besides the epoch end) that reads values to the host."""
        where: dict[str, Any] = dict(phase=phase.name, epoch=self.pos.epoch + 1, step=self.pos.global_step)
        values = {keys.TRAIN_LOSS: float(loss), keys.TRAIN_LR: lr, keys.PROGRESS_FRACTION: self._progress(),
                  keys.TRAIN_GRAD_NORM: float(getattr(self, "_last_grad_norm", float("nan")))}
        terms = torch.stack([t.detach().float() for t in res.terms.values()])
        terms = self.dist.sum_(terms) / self.dist.world_size  # the mean over the ranks (every rank logs here)
        values.update({keys.TRAIN_LOSS_TERM_PREFIX + n: float(t) for n, t in zip(res.terms, terms, strict=True)})
        # non-finite values are reported by the guard as events; the sampled series keeps finite points only
        self.sink.log_metrics([MetricPoint(**where, key=k, value=v) for k, v in values.items() if math.isfinite(v)])

    def _progress(self) -> float:
        return min(1.0, self.pos.global_step / max(self.config.total_steps, 1))

    def _amp(self, phase: PhaseConfig) -> bool:
        return phase.amp and self.device.type == "cuda"

    @contextmanager
    def _autocast(self, phase: PhaseConfig) -> Iterator[None]:
        with torch.autocast("cuda", dtype=torch.bfloat16) if self._amp(phase) else nullcontext():
            yield

    def _mark_updated(self) -> None:
        for p in self.model.parameters():
            if p.requires_grad and p.grad is not None:
                self.updated.add(self.names[id(p)])

    def _update_ema(self, phase: PhaseConfig) -> None:
        if self.ema is None or phase.ema_decay is None:
            return
        d = phase.ema_decay
        state = self.model.state_dict()
        floats = [n for n, v in state.items() if v.dtype.is_floating_point]
        with torch.no_grad():  # one multi-tensor kernel rather than one per tensor
            torch._foreach_lerp_([self.ema[n] for n in floats], [state[n] for n in floats], 1 - d)
            for name, value in state.items():
                if not value.dtype.is_floating_point:
                    self.ema[name].copy_(value)

    @contextmanager
    def _eval_weights(self) -> Iterator[None]:
        """Swap the EMA weights in (if any) for validation and saving."""
        if self.ema is None:
            yield
            return
        raw = {n: v.detach().clone() for n, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema)
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    def _apply_eval_weights(self) -> None:
        if self.ema is not None:
            self.model.load_state_dict(self.ema)

    def _snapshot(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def _delta_params(self) -> tuple[float, dict[str, float]]:
        """‖Δparam‖₂ over the epoch, in total and per group (raw weights, not EMA)."""
        sq: dict[str, float] = {g: 0.0 for g in self.model.param_groups()}
        for n, p in self.model.named_parameters():
            if n in self.epoch_start:
                sq[self.group_of[id(p)]] += float((p.detach() - self.epoch_start[n]).float().square().sum())
        return math.sqrt(sum(sq.values())), {g: math.sqrt(v) for g, v in sq.items()}

    def _maybe_interval_checkpoint(self, phase: PhaseConfig) -> None:
        if self.checkpoint_interval_s is None:
            return
        if time.monotonic() - self._last_interval_save >= self.checkpoint_interval_s:
            self._save_checkpoint(phase, f"{phase.name}-last")

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, phase: PhaseConfig, name: str) -> CheckpointInfo | None:
        """Write the full training state under `name` and report it to the sink (rank 0; None elsewhere)."""
        assert self.optimizer is not None
        if not self.dist.is_main:
            return None
        eval_state = self.ema if self.ema is not None else self.model.state_dict()
        state = {
            ckpt.KIND_KEY: self.kind,
            ckpt.MODEL_KEY: {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            ckpt.EMA_KEY: {k: v.detach().cpu() for k, v in self.ema.items()} if self.ema is not None else None,
            ckpt.EVAL_WEIGHTS_KEY: "ema" if self.ema is not None else "model",
            ckpt.OPTIMIZER_KEY: self.optimizer.state_dict(),
            ckpt.RNG_KEY: {ckpt.RNG_TORCH_KEY: torch.get_rng_state(),
                           ckpt.RNG_CUDA_KEY: torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            ckpt.CONFIG_KEY: self.config.model_dump(mode="json"),
            ckpt.CONFIG_SHA_KEY: self.config.sha256(),
            ckpt.POSITION_KEY: {ckpt.PHASE_INDEX_KEY: self.pos.phase_index, ckpt.PHASE_KEY: phase.name,
                                ckpt.EPOCH_KEY: self.pos.epoch, ckpt.BATCH_KEY: self.pos.batch,
                                ckpt.GLOBAL_STEP_KEY: self.pos.global_step,
                                # the phase that owns the optimizer/EMA state (one behind after a phase end)
                                ckpt.OPTIMIZER_PHASE_KEY: phase.name,
                                # the position counts global batches of world_size x batch_size scenes
                                ckpt.WORLD_SIZE_KEY: self.dist.world_size},
            ckpt.COUNTERS_KEY: {ckpt.NONFINITE_TOTAL_KEY: self.nonfinite_total,
                                ckpt.CONSECUTIVE_NONFINITE_KEY: self.consecutive_nonfinite,
                                ckpt.UPDATED_KEY: sorted(self.updated),
                                ckpt.EPOCH_STATS_KEY: {k: float(v) if isinstance(v, Tensor) else v
                                                       for k, v in vars(self.epoch_stats).items()}},
            ckpt.EPOCH_START_KEY: {k: v.cpu() for k, v in self.epoch_start.items()},
            ckpt.EVAL_MODEL_KEY: {k: v.detach().cpu() for k, v in eval_state.items()},
        }
        path = self._fresh_path(name)
        size, sha = ckpt.save_checkpoint(path, state)
        ended = self.config.phases[self.pos.phase_index - 1].name == phase.name if self.pos.phase_index else False
        epoch = phase.epochs if ended or name == "final" else self.pos.epoch  # epochs completed in `phase`
        info = CheckpointInfo(name=name, phase=phase.name, epoch=epoch, step=self.pos.global_step,
                              path=str(path), size=size, sha256=sha, is_final=name == "final")
        self.sink.log_checkpoint(info)
        # only now that the record points at the new file may the one it replaced go
        previous = self._written.get(name)
        if previous is not None and previous != path:
            previous.unlink(missing_ok=True)
        self._written[name] = path
        self.last_checkpoint = info
        self._last_interval_save = time.monotonic()
        return info

    def _fresh_path(self, name: str) -> Path:
        """A file that no record can point at yet: `<name>.pt` the first time, else a new unique name.

        A checkpoint under a reused name (`<phase>-last`) is never rewritten in place: a crash between the
        rename and the sink's record would leave a record whose file (and sha256) changed under it."""
        path = self.checkpoint_dir / f"{name}.pt"
        if path.exists() or self._written.get(name) == path:
            path = self.checkpoint_dir / f"{name}.{uuid.uuid4().hex[:12]}.pt"
        return path

    def _load_resume(self, path: Path) -> None:
        """Restore weights, position, counters and RNG; the optimizer/EMA are restored in _setup_phase."""
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if state[ckpt.CONFIG_SHA_KEY] != self.config.sha256():
            raise CheckpointError(f"checkpoint {path.name} was written for another config; cannot resume")
        p = state[ckpt.POSITION_KEY]
        written_by = int(p.get(ckpt.WORLD_SIZE_KEY, 1))
        if written_by != self.dist.world_size:
            raise CheckpointError(
                f"checkpoint {path.name} was written by a run of {written_by} training processes and this run has "
                f"{self.dist.world_size}: its position counts steps of {written_by} x data.batch_size scenes, and "
                "the steps per epoch, the learning-rate schedule and each process's scenes all depend on that "
                f"number; resume with resources.gpus = {written_by}")
        self.model.load_state_dict(state[ckpt.MODEL_KEY])
        self.pos = _Position(p[ckpt.PHASE_INDEX_KEY], p[ckpt.EPOCH_KEY], p[ckpt.BATCH_KEY], p[ckpt.GLOBAL_STEP_KEY])
        counters = state[ckpt.COUNTERS_KEY]
        self.nonfinite_total = counters[ckpt.NONFINITE_TOTAL_KEY]
        self.consecutive_nonfinite = counters[ckpt.CONSECUTIVE_NONFINITE_KEY]
        self.updated = set(counters[ckpt.UPDATED_KEY])
        self.epoch_stats = _EpochStats(**counters[ckpt.EPOCH_STATS_KEY])
        self.epoch_start = {k: v.to(self.device) for k, v in state[ckpt.EPOCH_START_KEY].items()}
        torch.set_rng_state(state[ckpt.RNG_KEY][ckpt.RNG_TORCH_KEY].cpu())
        if self.device.type == "cuda" and state[ckpt.RNG_KEY][ckpt.RNG_CUDA_KEY]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state[ckpt.RNG_KEY][ckpt.RNG_CUDA_KEY]])
        self._resume_state = state


def lr_at(phase: PhaseConfig, step: int, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based) of a phase of `total_steps` steps.

    1) linear warm-up over warmup_fraction·total; 2) then constant, cosine to 10 %, or one-cycle cosine to 0."""
    warmup = int(phase.warmup_fraction * total_steps)
    if step < warmup:
        return phase.lr * (step + 1) / warmup
    if phase.schedule == "constant":
        return phase.lr
    progress = (step - warmup + 1) / max(total_steps - warmup, 1)  # the peak is the last warm-up step
    floor = 0.1 if phase.schedule == "cosine" else 0.0
    return phase.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

