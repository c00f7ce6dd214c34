"""Evaluation of a trained model against the classical baselines on test scenes
(SCIENCE.md, "Estimators and evaluation").

Owns evaluate (→ api_schemas.EvaluationReport), evaluation_scenes and render_plots. The scenes come from the
TEST stream of the checkpoint's own system (`scenes.stream_seed(seed, Split.TEST, chunk)`, chunks of
POOL_CHUNK scenes as `SceneSource.pool`), so with the default seed and every K they are the model's own test
pool, disjoint from its train and val scenes. Tables by SNR bin, by K and by true range put the model and each
baseline side by side (K_acc/K_under/K_over, matched RMSE, P/R/F1 at the tolerances, RMSE/√CRB). Imports
torch, matplotlib (Agg, headless), api_schemas and ris_model; never Celery, HTTP or SQL.

Honest limits: RMSEs are over Hungarian-matched pairs, so a method that finds fewer sources is not penalized in
RMSE (see K_under and recall); the CRB is the stochastic bound for the true K and known σ², a reference for
one source's error, not a bound on a matched-pair RMSE under counting errors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch
from torch import Tensor

from api_schemas import SystemConfig
from api_schemas.evaluation import (
    MODEL_METHOD,
    RAW_MODEL_METHOD,
    BinTable,
    ConfusionMatrix,
    CrbSummary,
    EvaluationConfig,
    EvaluationReport,
    MethodMetrics,
)
from ris_model.estimators import (
    SearchGrid,
    SourceEstimate,
    Tolerances,
    counting_metrics,
    crb_compressed,
    evaluate_sources,
    match_sources,
    measurement_counts,
    oracle_array_counts,
    somp,
)
from ris_model.estimators.matching import Matching, within_tolerances
from ris_model.inference import Estimator, load_estimator
from ris_model.metrics import GeometryTally
from ris_model.scenes import POOL_CHUNK, SceneBatch, Split, generate_scenes, make_generator, stream_seed

#: progress(fraction in 0..1, stage name); may raise to stop the evaluation (the worker's cancel).
ProgressFn = Callable[[float, str], None]
#: Scenes per SOMP call between two progress reports.
SOMP_PROGRESS_CHUNK = 128
_ORACLE_STREAM = 1_000_000  # chunk index of the oracle array's own symbols and noise (past any scene chunk)
#: Stage → (start, end) of the overall fraction.
_STAGES = {"scenes": (0.0, 0.05), "model": (0.05, 0.15), "polish": (0.15, 0.25), "somp": (0.25, 0.7),
           "counts": (0.7, 0.75),
           "crb": (0.75, 0.95), "tables": (0.95, 1.0), "done": (1.0, 1.0)}


def evaluate(estimator_or_checkpoint: Estimator | str | Path, config: EvaluationConfig, *,
             device: str | torch.device | None = None, progress: ProgressFn | None = None) -> EvaluationReport:
    """Evaluate a model and the chosen baselines on test scenes of the model's own system.

    Args:
        estimator_or_checkpoint: an Estimator, or a checkpoint path (loaded with `load_estimator`).
        config: scenes, SNR/range bins, K values, baselines, tolerances, CRB, SOMP grid.
        device: where scenes, model and baselines run (None: the estimator's device, or CUDA when available).
        progress: called with (fraction, stage) as the work advances.

    Returns:
        EvaluationReport (JSON-serializable; `to_markdown()`; `render_plots` makes its PNGs).

    Raises:
        ValueError: the config does not fit the checkpoint's system (k_values above K_MAX).
        CheckpointError: a checkpoint path that cannot be loaded safely.
    """
    timing: dict[str, float] = {}
    report_progress = _Progress(progress, timing)
    est = estimator_or_checkpoint if isinstance(estimator_or_checkpoint, Estimator) else load_estimator(
        estimator_or_checkpoint, device)
    dev = torch.device(device) if device is not None else est.device
    system = est.system
    check_config(config, system)
    seed = config.seed if config.seed is not None else est.config.data.seed

    report_progress("scenes", 0.0)
    batch = evaluation_scenes(system, config.n_scenes, seed=seed, k_values=config.k_values, device=dev)
    estimates: dict[str, SourceEstimate | None] = {}
    counts: dict[str, Tensor] = {}
    report_progress("model", 0.0)
    raw = est.estimate(batch.y, batch.H, batch.codes, polish=False)
    if est.polish:
        report_progress("polish", 0.0)
    if est.polish and est.order_test:  # the count by penalized likelihood; SOMP's rule gets the same noise level
        model = est.refine_count(batch.y, batch.H, batch.codes, raw, batch.snr_db)
    else:
        model = est.refine(batch.y, batch.H, batch.codes, raw) if est.polish else raw
    estimates[MODEL_METHOD], counts[MODEL_METHOD] = model, model.k
    if RAW_MODEL_METHOD in config.baselines:
        estimates[RAW_MODEL_METHOD], counts[RAW_MODEL_METHOD] = raw, raw.k
    if "somp" in config.baselines:
        report_progress("somp", 0.0)
        somp_estimate = _run_somp(batch, system, config, lambda f: report_progress("somp", f))
        estimates["somp"], counts["somp"] = somp_estimate, somp_estimate.k
    report_progress("counts", 0.0)
    counts.update(_count_baselines(batch, config.baselines, seed))
    crb = None
    if config.crb:
        report_progress("crb", 0.0)
        bound = crb_compressed(system, batch.H, batch.codes, batch.azimuth, batch.elevation, batch.range_m,
                               batch.power, batch.mask, snr_db=batch.snr_db)
        crb = {"azimuth_deg": bound.azimuth_deg.cpu(), "elevation_deg": bound.elevation_deg.cpu(),
               "range_m": bound.range_m.cpu()}
    report_progress("tables", 0.0)
    cpu_batch = SceneBatch(**{f.name: getattr(batch, f.name).cpu() for f in fields(SceneBatch)})
    report = _build_report(cpu_batch, config, system, est, counts, estimates, crb)
    report_progress("done", 1.0)
    return report.model_copy(update={"timing_s": {k: round(v, 3) for k, v in timing.items()}})


def check_config(config: EvaluationConfig, system: SystemConfig) -> None:
    """Raises ValueError when `config` asks for something the checkpoint's system cannot give."""
    if config.k_values is not None and max(config.k_values) > system.k_max:
        raise ValueError(f"k_values {list(config.k_values)} exceed the checkpoint's K_MAX = {system.k_max}")
    if "somp" in config.baselines and system.n_bs_antennas < 2:
        raise ValueError("the somp baseline needs M >= 2 BS antennas")


def evaluation_scenes(system: SystemConfig, n: int, *, seed: int, k_values: tuple[int, ...] | None,
                      device: torch.device | str) -> SceneBatch:
    """The first `n` TEST-stream scenes of `seed` whose K is in `k_values` (all K when None).

    Chunk c is drawn from stream (seed, TEST, c) with POOL_CHUNK scenes, as `SceneSource.pool`, so with
    k_values None this is exactly the test pool of a run with `data.seed = seed`.
    """
    parts, have, chunk = [], 0, 0
    while have < n:
        g = make_generator(stream_seed(seed, Split.TEST, chunk), torch.device(device))
        scenes = generate_scenes(system, POOL_CHUNK, generator=g, device=device)
        if k_values is not None:
            keep = torch.isin(scenes.k, torch.tensor(k_values, device=scenes.k.device))
            scenes = scenes.index(keep.nonzero().squeeze(1))
        parts.append(scenes)
        have += len(scenes)
        chunk += 1
    batch = SceneBatch.cat(parts)
    return batch.index(torch.arange(n, device=batch.y.device))


# ---------------------------------------------------------------------------------------------- methods


def _run_somp(batch: SceneBatch, system: SystemConfig, config: EvaluationConfig,
              progress: Callable[[float], None]) -> SourceEstimate:
    g = config.somp_grid
    grid = SearchGrid.uniform(system, g.n_azimuth, g.n_elevation, g.n_range, device=batch.y.device)
    max_sources = min(system.k_max, system.n_bs_antennas - 1)
    parts = []
    for start in range(0, len(batch), SOMP_PROGRESS_CHUNK):
        sl = slice(start, start + SOMP_PROGRESS_CHUNK)
        res = somp(batch.y[sl], batch.H[sl], batch.codes[sl], grid, snr_db=batch.snr_db[sl], max_sources=max_sources)
        parts.append(res.estimate)
        progress(min(1.0, (start + SOMP_PROGRESS_CHUNK) / len(batch)))
    return SourceEstimate.cat([p.map(Tensor.cpu) for p in parts])


def _count_baselines(batch: SceneBatch, baselines: tuple[str, ...], seed: int) -> dict[str, Tensor]:
    """K̂ of the count-only baselines (MDL/AIC on R_yy, MDL/AIC on the oracle array), int64 [B] on the CPU."""
    out: dict[str, Tensor] = {}
    for name in baselines:
        method, _, where = name.partition("_")
        if where == "measurement":
            out[name] = measurement_counts(batch.y, method=method).cpu()  # type: ignore[arg-type]
        elif where == "oracle":
            g = make_generator(stream_seed(seed, Split.TEST, _ORACLE_STREAM), batch.y.device)
            out[name] = oracle_array_counts(batch, generator=g, method=method).cpu()  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------------------- tables


class _Progress:
    """Maps (stage, fraction within the stage) to an overall fraction and times the stages."""

    def __init__(self, fn: ProgressFn | None, timing: dict[str, float]) -> None:
        self.fn, self.timing = fn, timing
        self.stage: str | None = None
        self.started = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.perf_counter()
        if stage != self.stage:
            if self.stage is not None:
                self.timing[self.stage] = self.timing.get(self.stage, 0.0) + now - self.started
            self.stage, self.started = stage, now
        lo, hi = _STAGES[stage]
        if self.fn is not None:
            self.fn(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), stage)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return _finite_or_none(num / den)


def _crb_summary(crb: dict[str, Tensor], select: Tensor) -> CrbSummary:
    """Median √CRB over the present sources selected by `select` (bool [B, K]); non-finite bounds skipped."""
    def med(t: Tensor) -> float | None:
        v = t[select & torch.isfinite(t)]
        return float(v.median()) if v.numel() else None

    return CrbSummary(n_sources=int(select.sum()), azimuth_deg=med(crb["azimuth_deg"]),
                      elevation_deg=med(crb["elevation_deg"]), range_m=med(crb["range_m"]))


def _method_metrics(name: str, batch: SceneBatch, idx: Tensor, k_pred: Tensor, estimate: SourceEstimate | None,
                    k_max: int, tol: Tolerances, crb: CrbSummary | None) -> MethodMetrics:
    n = int(idx.numel())
    if n == 0:
        return MethodMetrics(method=name, n_scenes=0, k_acc=None, k_under=None, k_over=None)
    c = counting_metrics(batch.k[idx], k_pred[idx], k_max)
    metrics = MethodMetrics(method=name, n_scenes=n, k_acc=c.k_acc, k_under=c.k_under, k_over=c.k_over)
    if estimate is None:
        return metrics
    sub = SourceEstimate(k=estimate.k[idx], azimuth=estimate.azimuth[idx], elevation=estimate.elevation[idx],
                         range_m=estimate.range_m[idx], valid=estimate.valid[idx])
    ev = evaluate_sources(sub, batch.azimuth[idx], batch.elevation[idx], batch.range_m[idx], batch.mask[idx],
                          k_max=k_max, tolerances=tol)
    rmse = [_finite_or_none(v) for v in (ev.rmse_azimuth_deg, ev.rmse_elevation_deg, ev.rmse_range_m)]
    tp_rmse = [_finite_or_none(v) for v in (ev.tp_rmse_azimuth_deg, ev.tp_rmse_elevation_deg, ev.tp_rmse_range_m)]
    return metrics.model_copy(update=dict(
        n_true=ev.n_true, n_matched=ev.n_matched, rmse_azimuth_deg=rmse[0], rmse_elevation_deg=rmse[1],
        rmse_range_m=rmse[2], precision=ev.precision, recall=ev.recall, f1=ev.f1,
        outlier_share=1 - ev.n_true_positive / ev.n_matched if ev.n_matched else None,
        tp_rmse_azimuth_deg=tp_rmse[0], tp_rmse_elevation_deg=tp_rmse[1], tp_rmse_range_m=tp_rmse[2],
        crb_ratio_azimuth=_ratio(rmse[0], crb.azimuth_deg) if crb else None,
        crb_ratio_elevation=_ratio(rmse[1], crb.elevation_deg) if crb else None,
        crb_ratio_range=_ratio(rmse[2], crb.range_m) if crb else None,
    ))


def _scene_table(label: str, lo: float | None, hi: float | None, sel: Tensor, batch: SceneBatch,
                 methods: list[str], counts: dict[str, Tensor], estimates: dict[str, SourceEstimate | None],
                 k_max: int, tol: Tolerances, crb: dict[str, Tensor] | None) -> BinTable:
    idx = sel.nonzero().squeeze(1)
    summary = _crb_summary(crb, batch.mask & sel[:, None]) if crb is not None else None
    rows = [_method_metrics(m, batch, idx, counts[m], estimates.get(m), k_max, tol, summary) for m in methods]
    return BinTable(label=label, lo=lo, hi=hi, n_scenes=int(idx.numel()), methods=rows, crb=summary)


def _range_table(lo: float, hi: float, batch: SceneBatch, matchings: dict[str, Matching], tol: Tolerances,
                 crb: dict[str, Tensor] | None) -> BinTable:
    """Matched-pair RMSE (over all pairs and over the true positives) of the geometric methods over the true
    sources with lo ≤ r < hi."""
    in_bin = batch.mask & (batch.range_m >= lo) & (batch.range_m < hi)  # [B, K]
    summary = _crb_summary(crb, in_bin) if crb is not None else None
    rows = []
    for name, m in matchings.items():
        sel, tp = in_bin & m.matched, in_bin & within_tolerances(m, tol)
        n_pairs, n_tp = int(sel.sum()), int(tp.sum())
        rmse, tp_rmse = _pair_rmse(m, sel), _pair_rmse(m, tp)
        rows.append(MethodMetrics(
            method=name, n_scenes=int(in_bin.any(1).sum()), k_acc=None, k_under=None, k_over=None,
            n_true=int(in_bin.sum()), n_matched=n_pairs, rmse_azimuth_deg=rmse[0], rmse_elevation_deg=rmse[1],
            rmse_range_m=rmse[2], recall=n_pairs / max(int(in_bin.sum()), 1),
            outlier_share=1 - n_tp / n_pairs if n_pairs else None, tp_rmse_azimuth_deg=tp_rmse[0],
            tp_rmse_elevation_deg=tp_rmse[1], tp_rmse_range_m=tp_rmse[2],
            crb_ratio_azimuth=_ratio(rmse[0], summary.azimuth_deg) if summary else None,
            crb_ratio_elevation=_ratio(rmse[1], summary.elevation_deg) if summary else None,
            crb_ratio_range=_ratio(rmse[2], summary.range_m) if summary else None,
        ))
    return BinTable(label=f"r {lo:g}–{hi:g} m", lo=lo, hi=hi, n_scenes=int(in_bin.sum()), counts="sources",
                    methods=rows, crb=summary)


def _pair_rmse(m: Matching, sel: Tensor) -> list[float | None]:
    """RMSE of φ, θ (degrees) and r (meters) over the pairs `sel` [B, K] (None where there is none)."""
    if not bool(sel.any()):
        return [None, None, None]
    tally = GeometryTally()
    tally.update(m.d_azimuth, m.d_elevation, m.d_range_m, sel)
    r = tally.rmse()
    return [r["rmse_azimuth_deg"], r["rmse_elevation_deg"], r["rmse_range_m"]]


def _build_report(batch: SceneBatch, config: EvaluationConfig, system: SystemConfig, est: Estimator,
                  counts: dict[str, Tensor], estimates: dict[str, SourceEstimate | None],
                  crb: dict[str, Tensor] | None) -> EvaluationReport:
    k_max = system.k_max
    methods = [MODEL_METHOD, *[b for b in config.baselines]]
    t = config.tolerances
    tol = Tolerances(azimuth_deg=t.azimuth_deg, elevation_deg=t.elevation_deg, range_m=t.range_m)

    def table(label: str, lo: float | None, hi: float | None, sel: Tensor) -> BinTable:
        return _scene_table(label, lo, hi, sel, batch, methods, counts, estimates, k_max, tol, crb)

    by_snr = [table(f"SNR {lo:g}…{hi:g} dB", lo, hi, (batch.snr_db >= lo) & (batch.snr_db < hi))
              for lo, hi in config.snr_bins_db]
    by_snr.append(table("all", None, None, torch.ones(len(batch), dtype=torch.bool)))
    k_values = config.k_values or tuple(range(1, k_max + 1))
    by_k = [table(f"K = {k}", float(k), float(k), batch.k == k) for k in k_values]
    matchings = {name: match_sources(e, batch.azimuth, batch.elevation, batch.range_m, batch.mask)
                 for name, e in estimates.items() if e is not None}
    by_range = [_range_table(lo, hi, batch, matchings, tol, crb) for lo, hi in config.range_bins_m]
    conf = counting_metrics(batch.k, counts[MODEL_METHOD], k_max).confusion
    confusion = ConfusionMatrix(true_k=list(range(1, k_max + 1)),
                                predicted_k=[str(k) for k in range(k_max + 1)] + [f">{k_max}"],
                                counts=[list(row) for row in conf[1:]])  # true K = 0 never occurs
    system_summary = {k: v for k, v in system.model_dump(mode="json").items() if not isinstance(v, list | dict)}
    return EvaluationReport(checkpoint=dict(est.source), system=system_summary, config=config, methods=methods,
                            by_snr=by_snr, by_k=by_k, by_range=by_range, k_confusion=confusion)
