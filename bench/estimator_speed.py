"""Wall time of the classical estimators that the evaluation runs on every scene: SOMP, the ML polish (here
started from the true positions with 0.02 rad of azimuth error, so that it runs its full search; with and without
its split pass) and the count selection (five polished fits, `ris_model.estimators.order`). Not a test.

    python3 bench/estimator_speed.py [--device cpu] [--scenes 128] [--snr-min 10] [--out var/bench-estimators.json]

Prints and writes JSON: seconds for the batch and per 1,000 scenes (the evaluation's default test set is 2,000).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from api_schemas import SystemConfig  # noqa: E402
from ris_model.estimators.grid import SearchGrid, SourceEstimate  # noqa: E402
from ris_model.estimators.omp import somp  # noqa: E402
from ris_model.estimators.order import select_order  # noqa: E402
from ris_model.estimators.polish import polish  # noqa: E402
from ris_model.scenes import generate_scenes  # noqa: E402


def _timed(fn: object, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=128)
    parser.add_argument("--snr-min", type=float, default=10.0, help="dB; the default system's maximum is 20")
    parser.add_argument("--out", type=Path, default=Path("var/bench-estimators.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    system = SystemConfig(snr_min_db=args.snr_min)
    batch = generate_scenes(system, args.scenes, generator=torch.Generator(device).manual_seed(1), device=device)
    grid = SearchGrid.uniform(system, device=device)
    noise = 0.02 * torch.randn(batch.azimuth.shape, generator=torch.Generator(device).manual_seed(2),
                               dtype=torch.float64, device=device)
    start = SourceEstimate(k=batch.k, azimuth=batch.azimuth.double() + noise, elevation=batch.elevation.double(),
                           range_m=batch.range_m.double().clamp_min(system.range_min_m), valid=batch.mask)
    rows = {
        "somp_s": _timed(lambda: somp(batch.y, batch.H, batch.codes, grid, snr_db=batch.snr_db), device),
        "polish_s": _timed(lambda: polish(batch.y, batch.H, batch.codes, start, grid), device),
        "polish_no_split_s": _timed(lambda: polish(batch.y, batch.H, batch.codes, start, grid, n_splits=0), device),
        "select_order_s": _timed(lambda: select_order(batch.y, batch.H, batch.codes, start, grid, batch.snr_db),
                                 device),
    }
    result = {"device": str(device), "threads": torch.get_num_threads(), "scenes": args.scenes, **rows,
              **{k.removesuffix("_s") + "_s_per_1000": v * 1000 / args.scenes for k, v in rows.items()}}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
