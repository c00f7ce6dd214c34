"""Scene-generation throughput versus one training step: is generation ever the bottleneck? (SCIENCE.md, "Scenes")

Runs from the repo root with only torch, numpy, scipy and pydantic installed:

    python3 bench/generate.py [--device cpu|cuda] [--batch-sizes 1024 8192 65536] [--out var/bench-generate.json]

Prints a table and writes JSON: scenes/s of `ris_model.scenes.generate_scenes` per batch size (default system),
and the time of one training step (forward + loss + backward + optimizer step) of the default model at batch
64 and 256, with the scenes/s the step consumes, so the two can be compared directly.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine runs this without the package installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from api_schemas import LossWeights, ModelConfig, SystemConfig  # noqa: E402
from ris_model.losses import compute_loss  # noqa: E402
from ris_model.model.network import RisNet  # noqa: E402
from ris_model.scenes import generate_scenes, make_generator  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` calls, synchronizing the device around each."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_generation(system: SystemConfig, device: torch.device, batch_sizes: list[int], *, warmup: int,
                     repeats: int) -> list[dict]:
    rows = []
    gen = make_generator(0, device)
    for n in batch_sizes:
        try:
            times = _time(lambda n=n: generate_scenes(system, n, generator=gen, device=device), device,
                          warmup=warmup, repeats=repeats)
        except torch.OutOfMemoryError:
            rows.append({"batch_size": n, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        med = statistics.median(times)
        rows.append({"batch_size": n, "median_s": med, "min_s": min(times), "scenes_per_s": n / med})
    return rows


def bench_train_step(system: SystemConfig, model_cfg: ModelConfig, device: torch.device, batch_sizes: list[int],
                     *, warmup: int, repeats: int, amp: bool) -> list[dict]:
    torch.manual_seed(0)
    model = RisNet(system, model_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    weights = LossWeights(lam_cov=0.5, lam_k=1.0, lam_aux=1.0, lam_gap=0.05, lam_margin=0.05)  # default joint
    use_amp = amp and device.type == "cuda"
    rows = []
    for n in batch_sizes:
        batch = generate_scenes(system, n, generator=make_generator(1, device), device=device)

        def step(batch=batch) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else torch.autocast("cpu", enabled=False):
                out = model(batch.y, batch.H, batch.codes, batch.snr_db)
                loss = compute_loss(out, batch, weights, system).total
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times = _time(step, device, warmup=warmup, repeats=repeats)
        med = statistics.median(times)
        rows.append({"batch_size": n, "median_s": med, "min_s": min(times), "scenes_per_s": n / med,
                     "amp_bf16": use_amp})
    return rows


def main(argv: list[str] | None = None) -> int:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="generation batch sizes (default 1024 8192 65536 on CUDA, 256 1024 4096 on CPU)")
    parser.add_argument("--step-batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-amp", action="store_true", help="train step in fp32 on CUDA too")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench-generate.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    gen_sizes = args.batch_sizes or ([1024, 8192, 65536] if device.type == "cuda" else [256, 1024, 4096])
    system, model_cfg = SystemConfig(), ModelConfig()

    gen_rows = bench_generation(system, device, gen_sizes, warmup=args.warmup, repeats=args.repeats)
    step_rows = bench_train_step(system, model_cfg, device, args.step_batch_sizes, warmup=args.warmup,
                                 repeats=args.repeats, amp=not args.no_amp)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"system: default (N={system.n_ris}, M={system.n_bs_antennas}, L={system.n_snapshots}, "
          f"K_MAX={system.k_max}); model: {model_cfg.architecture}, d_model={model_cfg.d_model}, "
          f"layers={model_cfg.n_layers}")
    print(f"\n{'generate_scenes':<18}{'batch':>8}{'median ms':>12}{'scenes/s':>14}")
    for r in gen_rows:
        if "error" in r:
            print(f"{'':<18}{r['batch_size']:>8}{r['error']:>26}")
        else:
            print(f"{'':<18}{r['batch_size']:>8}{r['median_s'] * 1e3:>12.2f}{r['scenes_per_s']:>14,.0f}")
    print(f"\n{'train step':<18}{'batch':>8}{'median ms':>12}{'scenes/s':>14}{'gen share':>11}")
    best_gen = max((r["scenes_per_s"] for r in gen_rows if "error" not in r), default=float("nan"))
    for r in step_rows:
        # fraction of (generate + step) time spent generating, at the best measured generation rate
        gen_time = r["batch_size"] / best_gen
        r["generation_share"] = gen_time / (gen_time + r["median_s"])
        print(f"{'':<18}{r['batch_size']:>8}{r['median_s'] * 1e3:>12.2f}{r['scenes_per_s']:>14,.0f}"
              f"{r['generation_share']:>10.1%}")
    verdict = ("generation is NOT the bottleneck" if all(r["generation_share"] < 0.5 for r in step_rows)
               else "generation IS a bottleneck at some batch size")
    print(f"\n{verdict} (generation share of generate+step time, at the best generation rate)")

    result = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "warmup": args.warmup,
        "repeats": args.repeats, "system": system.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json"),
        "generation": gen_rows, "train_step": step_rows, "verdict": verdict,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
