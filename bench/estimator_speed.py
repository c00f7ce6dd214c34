"""Throughput and accuracy of the learned estimator's stages on the same scenes, side by side: the network alone,
the network + ML polish (`load_estimator(..., ).estimate(y, H, codes)`), and the network + count selection over
every K with the polished fits (`estimate(..., snr_db)`). Not a test.

    python3 bench/estimator_speed.py --checkpoint OUT/final.pt [--device cuda] [--batches 64 2048]
        [--scenes 2048] [--seed 0] [--out var/bench-estimator-speed.json]

For each batch size: scenes/s of each stage (warm: the first batch of each stage is run once before timing),
then K_acc (overall and by SNR bin: −5..0, 0..10, 10..20 dB) and F1, matched RMSE and the true positives' RMSE
at 10–20 dB of each stage, on the same scenes (the first `--scenes` test-stream scenes of `--seed`, the scenes
`python -m ris_model evaluate` uses). Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ris_model.estimators.matching import evaluate_sources  # noqa: E402
from ris_model.estimators.result import SourceEstimate  # noqa: E402
from ris_model.evaluate.evaluation import evaluation_scenes  # noqa: E402
from ris_model.inference import Estimator, load_estimator  # noqa: E402
from ris_model.scenes import SceneBatch  # noqa: E402

SNR_BINS_DB = ((-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))
STAGES = ("network", "polish", "count_selection")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(est: Estimator, batch: SceneBatch, stage: str, batch_size: int) -> tuple[SourceEstimate, float]:
    """The stage's estimate of every scene, in batches of batch_size, and the wall seconds it took."""
    est.batch_size = batch_size
    parts = []
    _sync(est.device)
    start = time.perf_counter()
    for s in range(0, len(batch), batch_size):
        sl = slice(s, s + batch_size)
        snr = batch.snr_db[sl] if stage == "count_selection" else None
        parts.append(est.estimate(batch.y[sl], batch.H[sl], batch.codes[sl], snr, polish=stage != "network"))
    _sync(est.device)
    return SourceEstimate.cat(parts), time.perf_counter() - start


def _accuracy(out: SourceEstimate, batch: SceneBatch, k_max: int) -> dict[str, float | None]:
    snr = batch.snr_db.cpu()
    row: dict[str, float | None] = {"k_acc": float((out.k == batch.k.cpu()).double().mean())}
    for lo, hi in SNR_BINS_DB:
        sel = (snr >= lo) & (snr < hi) if hi < SNR_BINS_DB[-1][1] else (snr >= lo)
        row[f"k_acc_{lo:g}_{hi:g}db"] = float((out.k[sel] == batch.k.cpu()[sel]).double().mean()) if bool(
            sel.any()) else None
    for lo in (None, 10.0):
        sel = torch.ones_like(snr, dtype=torch.bool) if lo is None else snr >= lo
        idx = sel.nonzero().squeeze(1)
        sub = out.map(lambda t, idx=idx: t[idx])
        truth = (getattr(batch, f).cpu()[idx] for f in ("azimuth", "elevation", "range_m", "mask"))
        ev = evaluate_sources(sub, *truth, k_max=k_max)
        tag = "" if lo is None else "_10_20db"
        row[f"f1{tag}"] = ev.f1
        if lo is not None:
            row.update({f"rmse{tag}_azimuth_deg": ev.rmse_azimuth_deg,
                        f"rmse{tag}_elevation_deg": ev.rmse_elevation_deg, f"rmse{tag}_range_m": ev.rmse_range_m,
                        f"tp_rmse{tag}_azimuth_deg": ev.tp_rmse_azimuth_deg,
                        f"tp_rmse{tag}_elevation_deg": ev.tp_rmse_elevation_deg,
                        f"tp_rmse{tag}_range_m": ev.tp_rmse_range_m,
                        f"outliers{tag}": 1 - ev.n_true_positive / max(ev.n_matched, 1)})
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 4)) for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--scenes", type=int, default=2048, help="test-stream scenes (all stages, every batch size)")
    parser.add_argument("--seed", type=int, default=None, help="test-stream seed (default: the checkpoint's)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--out", type=Path, default=Path("var/bench-estimator-speed.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    est = load_estimator(args.checkpoint, device)
    seed = args.seed if args.seed is not None else est.config.data.seed
    batch = evaluation_scenes(est.system, args.scenes, seed=seed, k_values=None, device=device)
    result: dict[str, object] = {"device": str(device), "threads": torch.get_num_threads(), "scenes": len(batch),
                                 "checkpoint": str(args.checkpoint), "seed": seed, "rows": []}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    rows: list[dict[str, object]] = []
    for batch_size in args.batches:
        for stage in args.stages:
            warm = batch.index(torch.arange(min(batch_size, len(batch)), device=batch.y.device))
            _run(est, warm, stage, batch_size)  # warm-up: allocator, kernels, the grid
            out, seconds = _run(est, batch, stage, batch_size)
            row = {"batch": batch_size, "stage": stage, "seconds": round(seconds, 3),
                   "scenes_per_s": round(len(batch) / seconds, 1), **_accuracy(out, batch, est.system.k_max)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result["rows"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
