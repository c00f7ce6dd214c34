"""Fit and score the count rule of `ris_model.estimators.order` on `bench/order_features.py` files
(not a test): the prior weight w₀ and decay d of

    K̂ = argmax_K  −E(K)/σ² − (2L + 3)·K + w₀·exp(−SNR/d)·L·log p(K | y)

are chosen on one file's scenes (a grid search for the best K_acc weighted as the test stream weights the SNR
bins: −5..0 / 0..10 / 10..20 dB = 0.2 / 0.4 / 0.4) and scored on another file's (a different seed).

    python3 bench/order_fusion.py --fit var/feat7.pt --held-out var/feat8.pt [--out var/bench-order-fusion.json]

Prints K_acc by bin on the held-out scenes for the K-head, AIC alone, the fitted rule and the module's defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ris_model.estimators.order import DEFAULT_PRIOR_DECAY_DB, DEFAULT_PRIOR_WEIGHT, order_scores  # noqa: E402

BINS = ((-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))
TEST_STREAM_WEIGHTS = (0.2, 0.4, 0.4)  # SNR uniform on −5..20 dB
DEFAULT_SNAPSHOTS = 16  # files written before they recorded L hold the default system's


def k_acc(d: dict, k: torch.Tensor) -> list[float]:
    """K_acc in each SNR bin, then the test-stream-weighted mean."""
    by_bin = [float((k == d["k_true"])[(d["snr_db"] >= lo) & (d["snr_db"] < hi)].float().mean()) for lo, hi in BINS]
    weighted = sum(w * a for w, a in zip(TEST_STREAM_WEIGHTS, by_bin, strict=True))
    return [round(a, 4) for a in by_bin] + [round(weighted, 4)]


def choose(d: dict, weight: float, decay_db: float, prior: bool = True) -> torch.Tensor:
    """K̂ of the rule; the features' energies are in units of L·σ² (σ² = 1 here)."""
    L = int(d.get("n_snapshots", DEFAULT_SNAPSHOTS))
    scores = order_scores(d["energy"] * L, torch.ones_like(d["snr_db"]), d["snr_db"], L,
                          d["log_p_head"] if prior else None, prior_weight=weight, prior_decay_db=decay_db)
    return scores.argmax(1) + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fit", type=Path, required=True)
    parser.add_argument("--held-out", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("var/bench-order-fusion.json"))
    args = parser.parse_args()
    fit, held = torch.load(args.fit), torch.load(args.held_out)
    grid = itertools.product((0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0), (2.5, 5.0, 10.0, 20.0, 1e9))
    scored = sorted(((k_acc(fit, choose(fit, w, dd))[-1], w, dd) for w, dd in grid), reverse=True)
    _, w_best, d_best = scored[0]
    rows = {
        "k_head": k_acc(held, held["k_head"]),
        "aic_alone": k_acc(held, choose(held, 0.0, 1.0, prior=False)),
        f"fitted (w0 {w_best:g}, d {d_best:g} dB)": k_acc(held, choose(held, w_best, d_best)),
        f"defaults (w0 {DEFAULT_PRIOR_WEIGHT:g}, d {DEFAULT_PRIOR_DECAY_DB:g} dB)":
            k_acc(held, choose(held, DEFAULT_PRIOR_WEIGHT, DEFAULT_PRIOR_DECAY_DB)),
    }
    print(f"held-out {args.held_out} ({len(held['k_true'])} scenes), K_acc by bin "
          f"{' / '.join(f'{lo:g}..{hi:g}' for lo, hi in BINS)} dB and weighted:")
    for name, acc in rows.items():
        print(f"  {name:32s} {acc}")
    print("best on the fit file (weighted K_acc, w0, d):", scored[:5])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"fit": str(args.fit), "held_out": str(args.held_out), "k_acc_held_out": rows,
                                    "fit_ranking": scored[:10]}, indent=2))


if __name__ == "__main__":
    main()
