"""Classical baselines on the test stream of the default system (SCIENCE.md, "Estimators and evaluation"): K accuracy of
SOMP, of MDL/AIC on the compressed R_yy and of MDL/AIC on an oracle uncompressed RIS array; SOMP's matched RMSE; the
median √CRB. Results by SNR bin, as a table and as JSON.

    python3 bench/baselines.py [--device cuda] [--n-scenes 2000] [--out var/bench-baselines.json] [--calibrate]

`--calibrate` also prints SOMP's K accuracy against its gain threshold on train-stream scenes (never the test
stream), the data `omp.DEFAULT_GAIN_THRESHOLD` was chosen from. Needs only torch, numpy, scipy and pydantic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from api_schemas import DataConfig, SystemConfig  # noqa: E402
from ris_model.estimators import (  # noqa: E402
    SearchGrid,
    SourceEstimate,
    crb_compressed,
    evaluate_sources,
    measurement_counts,
    oracle_array_counts,
    somp,
)
from ris_model.estimators.omp import (  # noqa: E402  (private helpers: the calibration replays the decision)
    DEFAULT_GAIN_THRESHOLD,
    _noise_var,
    _prune,
    _somp_chunk,
    _stopping_rule,
)
from ris_model.scenes import SceneBatch, SceneSource, Split, generate_scenes, make_generator, stream_seed  # noqa: E402

SNR_BINS_DB = ((-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    system, data = SystemConfig(), DataConfig()
    batch = SceneSource(system, data, device).test_scenes(args.n_scenes)
    grid = SearchGrid.uniform(system, device=device)

    t0 = time.perf_counter()
    omp = somp(batch.y, batch.H, batch.codes, grid, snr_db=batch.snr_db)
    t_somp = time.perf_counter() - t0
    counts = {"somp": omp.estimate.k}
    for method in ("mdl", "aic"):
        counts[f"ryy_{method}"] = measurement_counts(batch.y, method=method)
        gen = make_generator(stream_seed(data.seed, Split.TEST, 10_000), device)  # fresh oracle symbols/noise
        counts[f"oracle_{method}"] = oracle_array_counts(batch, generator=gen, method=method)
    t0 = time.perf_counter()
    crb = crb_compressed(system, batch.H, batch.codes, batch.azimuth, batch.elevation, batch.range_m, batch.power,
                         batch.mask, snr_db=batch.snr_db)
    t_crb = time.perf_counter() - t0

    rows = [summarize(batch, counts, omp.estimate, crb, lo, hi, system.k_max) for lo, hi in SNR_BINS_DB]
    rows.append(summarize(batch, counts, omp.estimate, crb, -math.inf, math.inf, system.k_max))
    report = {"n_scenes": args.n_scenes, "device": str(device), "torch": torch.__version__,
              "somp_grid": list(grid.shape), "somp_gain_threshold": DEFAULT_GAIN_THRESHOLD,
              "seconds": {"somp": round(t_somp, 2), "crb": round(t_crb, 2)}, "bins": rows}
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    if args.calibrate:
        calibrate(system, data, grid, device, args.n_scenes)


def summarize(batch: SceneBatch, counts: dict[str, torch.Tensor], est: SourceEstimate, crb, lo: float, hi: float,
              k_max: int) -> dict[str, object]:
    """K accuracy of every counter, SOMP's evaluation and the median √CRB for scenes with lo ≤ SNR < hi."""
    sel = (batch.snr_db >= lo) & (batch.snr_db < hi)
    idx = sel.nonzero().squeeze(1)
    sub = est.map(lambda t: t[idx])
    ev = evaluate_sources(sub, batch.azimuth[idx], batch.elevation[idx], batch.range_m[idx], batch.mask[idx],
                          k_max=k_max)
    present = batch.mask[idx]
    med = lambda t: float(t[idx][present].median()) if present.any() else math.nan  # noqa: E731
    return {
        "snr_db": [lo, hi], "n_scenes": int(sel.sum()),
        **{f"k_acc_{name}": float((k[idx] == batch.k[idx]).float().mean()) for name, k in counts.items()},
        "somp_k_under": ev.counting.k_under, "somp_k_over": ev.counting.k_over,
        "somp_rmse_azimuth_deg": ev.rmse_azimuth_deg, "somp_rmse_elevation_deg": ev.rmse_elevation_deg,
        "somp_rmse_range_m": ev.rmse_range_m, "somp_f1": ev.f1,
        "crb_median_azimuth_deg": med(crb.azimuth_deg), "crb_median_elevation_deg": med(crb.elevation_deg),
        "crb_median_range_m": med(crb.range_m), "somp_confusion": ev.counting.confusion,
    }


def print_table(report: dict) -> None:
    cols = ["k_acc_somp", "k_acc_ryy_mdl", "k_acc_ryy_aic", "k_acc_oracle_mdl", "k_acc_oracle_aic",
            "somp_rmse_azimuth_deg", "somp_rmse_elevation_deg", "somp_rmse_range_m", "somp_f1",
            "crb_median_azimuth_deg", "crb_median_elevation_deg", "crb_median_range_m"]
    short = ["K somp", "K Ryy mdl", "K Ryy aic", "K orc mdl", "K orc aic", "somp φ°", "somp θ°", "somp r m",
             "somp F1", "√CRB φ°", "√CRB θ°", "√CRB r m"]
    print(f"n_scenes={report['n_scenes']} device={report['device']} somp grid={report['somp_grid']} "
          f"seconds={report['seconds']}")
    print(f"{'SNR dB':>12} {'n':>5} " + " ".join(f"{s:>10}" for s in short))
    for row in report["bins"]:
        lo, hi = row["snr_db"]
        label = "all" if math.isinf(lo) else f"{lo:g}..{hi:g}"
        print(f"{label:>12} {row['n_scenes']:>5} " + " ".join(f"{row[c]:>10.3f}" for c in cols))


def calibrate(system: SystemConfig, data: DataConfig, grid: SearchGrid, device: torch.device, n: int) -> None:
    """SOMP K accuracy against the gain threshold on train-stream scenes (not the test stream)."""
    gen = make_generator(stream_seed(data.seed, Split.TRAIN, 99_999, 0), device)
    batch = generate_scenes(system, n, generator=gen, device=device)
    # the greedy picks do not depend on the threshold: run them once, then only the decision per threshold
    parts = [_somp_chunk(batch.y[s:s + 32], batch.H[s:s + 32], batch.codes[s:s + 32], grid, 5, 8, 2)
             for s in range(0, n, 32)]
    energy, atoms = torch.cat([p[1] for p in parts]), torch.cat([p[3] for p in parts])
    noise_var = _noise_var(batch.y, batch.snr_db, energy, 5)
    L = batch.y.shape[1]
    for thr in (2.0, 2.5, 3.0, 3.5, 4.0, 5.0):
        k_fwd = _stopping_rule(energy, noise_var, L, 1, thr)
        active = torch.arange(5, device=device) < k_fwd[:, None]
        k = _prune(batch.y, atoms, active, thr * L * noise_var, 1).sum(1)
        accs = [float((k == batch.k)[(batch.snr_db >= lo) & (batch.snr_db < hi)].float().mean())
                for lo, hi in SNR_BINS_DB]
        print(f"calibration thr {thr}: forward-only {float((k_fwd == batch.k).float().mean()):.3f}  "
              f"with pruning {float((k == batch.k).float().mean()):.3f}  by bin {[round(a, 3) for a in accs]}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-scenes", type=int, default=2000)
    p.add_argument("--out", default="var/bench-baselines.json")
    p.add_argument("--calibrate", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    main()
