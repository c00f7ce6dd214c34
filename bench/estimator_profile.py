"""Where the count selection's time goes, and what its LM schedule buys: K_acc and scenes/s of the count selection
for several `Schedule`s on the same scenes, and a torch.profiler table (top operators, kernel launches) of one
chunk. Not a test.

    python3 bench/estimator_profile.py --checkpoint final.pt [--device cuda] [--scenes 2048] [--batches 64 2048]
        [--schedules 8,6,4,2,2 4,4,2,2,2] [--profile] [--out var/bench-estimator-profile.json]

A schedule is start,trial,final LM iterations and relocation,split trials (`ris_model.estimators.polish.Schedule`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ris_model.estimators.atoms import noise_var_from_snr  # noqa: E402
from ris_model.estimators.order import count_fits, order_scores  # noqa: E402
from ris_model.estimators.polish import Schedule  # noqa: E402
from ris_model.evaluate.evaluation import evaluation_scenes  # noqa: E402
from ris_model.inference import decode_output, load_estimator  # noqa: E402

SNR_BINS_DB = ((-5.0, 0.0), (0.0, 10.0), (10.0, 30.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scenes", type=int, default=2048)
    parser.add_argument("--batches", type=int, nargs="+", default=[2048])
    parser.add_argument("--schedules", nargs="+", default=["8,6,4,2,2"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("var/bench-estimator-profile.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    est = load_estimator(args.checkpoint, device)
    batch = evaluation_scenes(est.system, args.scenes, seed=est.config.data.seed, k_values=None, device=device)
    grid = est._search_grid()
    with torch.inference_mode():
        net = decode_output(est.model(batch.y, batch.H, batch.codes)).map(lambda t: t.to(device))
    L = est.system.n_snapshots
    rows = []

    def run(schedule: Schedule, bs: int) -> torch.Tensor:
        ks = []
        for s in range(0, len(batch), bs):
            sl = slice(s, s + bs)
            sub = net.map(lambda t, sl=sl: t[sl])
            fits = count_fits(batch.y[sl], batch.H[sl], batch.codes[sl], sub, grid, schedule=schedule,
                              chunk_size=bs)
            snr = batch.snr_db[sl].double()
            assert sub.k_log_prob is not None
            scores = order_scores(fits.energy, noise_var_from_snr(batch.y[sl], snr), snr, L,
                                  sub.k_log_prob[:, :fits.energy.shape[1]])
            ks.append(scores.argmax(1) + 1)
        return torch.cat(ks)

    with torch.inference_mode():
        for bs in args.batches:
            for text in args.schedules:
                a, b, c, r, sp = (int(v) for v in text.split(","))
                schedule = Schedule(start_iters=a, trial_iters=b, final_iters=c, relocations=r, splits=sp)
                if device.type == "cuda":
                    run(schedule, bs)  # warm: kernels, allocator
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                k = run(schedule, bs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                row: dict[str, object] = {"batch": bs, "schedule": text, "scenes_per_s": round(len(batch) / dt, 1),
                                          "k_acc": round(float((k == batch.k).double().mean()), 4)}
                for lo, hi in SNR_BINS_DB:
                    sel = (batch.snr_db >= lo) & (batch.snr_db < hi)
                    row[f"k_acc_{lo:g}_{hi:g}"] = round(float((k[sel] == batch.k[sel]).double().mean()), 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            for bs in args.batches:
                sched = Schedule()
                with profile(activities=acts) as prof:
                    sub = net.map(lambda t, bs=bs: t[:bs])
                    count_fits(batch.y[:bs], batch.H[:bs], batch.codes[:bs], sub, grid, schedule=sched, chunk_size=bs)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
                table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=50)
                kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
                print(f"=== profile batch {bs}: {kernels} CUDA kernel launches\n{table}", flush=True)
                rows.append({"batch": bs, "profile": table, "kernels": kernels})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
