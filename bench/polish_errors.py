"""Matched-pair position errors of a checkpoint's network with and without the ML polish, split into scenes
with the right and the wrong count, with the gross-error share (> 5° in φ or θ) and the RMSE without it.

    python3 bench/polish_errors.py --checkpoint final.pt [--scenes 1000] [--snr 10 20] [--device cpu]
        [--rebirths 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ris_model import load_estimator
from ris_model.estimators.matching import match_sources
from ris_model.estimators.polish import polish
from ris_model.evaluate.evaluation import evaluation_scenes


def _summary(matching, sel: torch.Tensor) -> dict:  # noqa: ANN001
    m = matching.matched & sel[:, None]
    d_az, d_el = matching.d_azimuth[m].abs().rad2deg(), matching.d_elevation[m].abs().rad2deg()
    d_r = matching.d_range_m[m].abs()
    gross = (d_az > 5) | (d_el > 5)
    rms = lambda t: round(float(t.square().mean().sqrt()), 3)  # noqa: E731
    return {"pairs": int(m.sum()), "rmse_deg_m": [rms(d_az), rms(d_el), rms(d_r)],
            "median_deg_m": [round(float(t.median()), 3) for t in (d_az, d_el, d_r)],
            "gross_share": round(float(gross.double().mean()), 4),
            "rmse_without_gross_deg": [rms(d_az[~gross]), rms(d_el[~gross])]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--snr", type=float, nargs=2, default=(10.0, 20.0), metavar=("LO", "HI"))
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rebirths", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    est = load_estimator(args.checkpoint, device=args.device, polish=False)
    system = est.system.model_copy(update={"snr_min_db": args.snr[0], "snr_max_db": args.snr[1]})
    b = evaluation_scenes(system, args.scenes, seed=args.seed, k_values=None, device=args.device)
    raw = est.estimate(b.y, b.H, b.codes)
    started = time.perf_counter()
    polished = polish(b.y.to(est.device), b.H.to(est.device), b.codes.to(est.device), raw, est._search_grid(),
                      n_rebirths=args.rebirths)
    result = {"checkpoint": args.checkpoint, "scenes": args.scenes, "snr_db": list(args.snr), "seed": args.seed,
              "rebirths": args.rebirths, "polish_s": round(time.perf_counter() - started, 1), "methods": {}}
    truth = (b.azimuth.cpu(), b.elevation.cpu(), b.range_m.cpu(), b.mask.cpu())
    for name, e in (("raw", raw), ("polished", polished)):
        matching = match_sources(e, *truth)
        right = e.k == b.k.cpu()
        result["methods"][name] = {label: _summary(matching, sel) for label, sel in
                                   (("all", torch.ones_like(right)), ("k_right", right), ("k_wrong", ~right))}
    result["k_acc"] = round(float((raw.k == b.k.cpu()).double().mean()), 4)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
