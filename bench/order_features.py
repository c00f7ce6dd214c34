"""Per-scene features of the model-order decision: the K-head's log-probabilities, the
residual energy of the polished fit for every count K = 1..K_max (`ris_model.estimators.order.count_fits`), the
SNR and the truth. Not a test; `bench/order_fusion.py` fits and scores count rules on the files it writes.

    python3 bench/order_features.py --checkpoint final.pt [--device cuda] [--per-bin 2000] [--seed 7]
                                    [--out var/order-features.pt]

Scenes are fresh draws of each SNR bin (−5..0, 0..10, 10..20 dB) from a seed of their own (not the test
stream). For each K, the fit starts from the K slots of highest existence logit and is polished; its residual
energy Σ_l ‖y_l − Φ_l·ŝ_l‖² is saved in units of L·σ² (σ² from the scene's SNR), with the positions; so is the
fit polished from the true positions (is a gross error the search's fault or the likelihood's?).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ris_model.estimators.atoms import noise_var_from_snr  # noqa: E402
from ris_model.estimators.grid import SourceEstimate  # noqa: E402
from ris_model.estimators.order import count_fits, residual_energy  # noqa: E402
from ris_model.estimators.polish import DEFAULT_SPLITS, polish  # noqa: E402
from ris_model.inference import decode_output, load_estimator  # noqa: E402
from ris_model.scenes import generate_scenes  # noqa: E402

BINS = ((-5.0, 0.0), (0.0, 10.0), (10.0, 20.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-bin", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--splits", type=int, default=DEFAULT_SPLITS, help="split passes of each count's polish")
    parser.add_argument("--out", type=Path, default=Path("var/order-features.pt"))
    args = parser.parse_args()
    est = load_estimator(args.checkpoint, args.device)
    system, dev = est.system, torch.device(args.device)
    grid, L = est._search_grid(), system.n_snapshots
    rows: dict[str, list[torch.Tensor]] = {}
    for i, (lo, hi) in enumerate(BINS):
        start = time.perf_counter()
        sys_bin = system.model_copy(update={"snr_min_db": lo, "snr_max_db": hi})
        batch = generate_scenes(sys_bin, args.per_bin, generator=torch.Generator(dev).manual_seed(args.seed * 10 + i),
                                device=dev)
        for s in range(0, args.per_bin, args.chunk):
            sl = slice(s, s + args.chunk)
            y, H, codes, snr = batch.y[sl], batch.H[sl], batch.codes[sl], batch.snr_db[sl]
            with torch.inference_mode():
                out = est.model(y, H, codes)
                raw = decode_output(out).map(lambda t: t.to(dev))
                unit = L * noise_var_from_snr(y, snr)  # [b]
                fits = count_fits(y, H, codes, raw, grid, n_splits=args.splits, chunk_size=args.chunk)
                truth = SourceEstimate(k=batch.k[sl], azimuth=batch.azimuth[sl].double(),
                                       elevation=batch.elevation[sl].double(),
                                       range_m=batch.range_m[sl].double().clamp_min(0.1), valid=batch.mask[sl])
                from_truth = polish(y, H, codes, truth, grid, n_splits=args.splits, chunk_size=args.chunk
                                    ).map(lambda t: t.to(dev))
            part = {
                "snr_db": snr.double(), "k_true": batch.k[sl], "k_head": raw.k,
                "log_p_head": raw.k_log_prob,
                "energy": fits.energy / unit[:, None],  # [b, K_max]: E(K) / (L·σ²)
                "positions": torch.stack([torch.stack([f.azimuth, f.elevation, f.range_m], -1) for f in fits.fits],
                                         1).float(),  # [b, K_max (fit K), S, 3]
                "truth": torch.stack([batch.azimuth[sl], batch.elevation[sl], batch.range_m[sl]], -1).float(),
                "mask": batch.mask[sl],
                "truth_energy": residual_energy(y, H, codes, from_truth, grid) / unit,  # polished from the truth
                "truth_polished": torch.stack([from_truth.azimuth, from_truth.elevation, from_truth.range_m],
                                              -1).float(),
            }
            for key, value in part.items():
                rows.setdefault(key, []).append(value.cpu())
        print(f"SNR {lo:g}..{hi:g} dB: {args.per_bin} scenes in {time.perf_counter() - start:.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: torch.cat(v) for key, v in rows.items()}
               | {"checkpoint": str(args.checkpoint), "n_snapshots": L, "splits": args.splits}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
