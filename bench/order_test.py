"""Model-order moves after the ML polish (an issue-6 experiment): does a residual test with the known noise level
(the information SOMP's stopping rule is given) correct the K-head's count? Not a test.

    python3 bench/order_test.py --checkpoint final.pt [--device cpu] [--per-bin 200] [--thresholds 2 3 4]
                                [--out var/bench-order-test.json]

For fresh scenes of each SNR bin (not the test stream: a seed of its own): the K-head's count K̂, then the
moves of `ris_model.estimators.order` on the polished fit (σ² from the scene's SNR, as SOMP's rule), each
threshold τ applied to the same moves: add only; add, else drop; add, else drop only at SNR ≥ 0 dB (the
default). Prints K_acc by bin for the head, those, and SOMP; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ris_model.estimators import SearchGrid, somp  # noqa: E402
from ris_model.estimators.atoms import noise_var_from_snr  # noqa: E402
from ris_model.estimators.order import decide, order_moves  # noqa: E402
from ris_model.inference import load_estimator  # noqa: E402
from ris_model.scenes import generate_scenes  # noqa: E402

BINS = ((-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-bin", type=int, default=200)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", type=Path, default=Path("var/bench-order-test.json"))
    args = parser.parse_args()
    est = load_estimator(args.checkpoint, args.device)
    system, m, dev = est.system, est.config.model, torch.device(args.device)
    grid = SearchGrid.uniform(system, m.grid_azimuth, m.grid_elevation, m.grid_inv_range, device=dev)
    result = {"checkpoint": str(args.checkpoint), "device": str(dev), "per_bin": args.per_bin, "bins": []}
    for lo, hi in BINS:
        start = time.perf_counter()
        sys_bin = system.model_copy(update={"snr_min_db": lo, "snr_max_db": hi})
        gen = torch.Generator(dev).manual_seed(args.seed)
        batch = generate_scenes(sys_bin, args.per_bin, generator=gen, device=dev)
        decisions: dict[str, list[torch.Tensor]] = {"head": [], "somp": []}
        for s in range(0, args.per_bin, args.chunk):
            sl = slice(s, s + args.chunk)
            y, H, codes, snr = batch.y[sl], batch.H[sl], batch.codes[sl], batch.snr_db[sl]
            raw = est.estimate(y, H, codes, polish=False)
            polished = est.refine(y, H, codes, raw).map(lambda t: t.to(dev))
            moves = order_moves(y, H, codes, polished, grid)
            floor = system.n_snapshots * noise_var_from_snr(y, snr)  # L·σ²
            decisions["head"].append(raw.k.to(dev))
            decisions["somp"].append(somp(y, H, codes, grid, snr_db=snr, max_sources=system.k_max).estimate.k)
            for tau in args.thresholds:
                for name, k in ((f"add_{tau:g}", decide(polished, moves, tau * floor, drop=False).k),
                                (f"both_{tau:g}", decide(polished, moves, tau * floor).k),
                                (f"both_{tau:g}_drop_above_0dB", decide(polished, moves, tau * floor,
                                                                        drop=snr >= 0.0).k)):
                    decisions.setdefault(name, []).append(k)
        truth = batch.k.cpu()
        acc = {name: float((torch.cat(ks).cpu() == truth).float().mean()) for name, ks in decisions.items()}
        row = {"snr_db": [lo, hi], "k_acc": acc, "seconds": round(time.perf_counter() - start, 1)}
        result["bins"].append(row)
        print(f"SNR {lo:g}..{hi:g} dB: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
