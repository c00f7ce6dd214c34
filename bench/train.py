"""Training throughput of the `joint` phase: samples/s of the real train step (scene generation on
the device + forward + loss + backward + clip + AdamW + EMA) at several batch sizes; bf16 autocast on CUDA.
Times one epoch of the trainer's own loop (Trainer._train_epoch) after five warm-up steps.

    python3 bench/train.py [--device cuda] [--batches 64 256 2048] [--steps 30] [--model KEY=VALUE ...]
                           [--torch-route atom_norms image refine] [--out var/bench-train.json]

--torch-route turns the named fused Triton routes of the look pass off (ris_model.accel.lowp.FusedRoutes, passed
to the model), for comparing routes in one process.

Prints a table and writes JSON. Not a test. Also reports the share of each step spent generating scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from api_schemas import DataConfig, LossWeights, ModelConfig, PhaseConfig, TrainingJobConfig  # noqa: E402
from ris_model.accel.lowp import ALL_FUSED, FusedRoutes  # noqa: E402
from ris_model.model.network import RisNet  # noqa: E402
from ris_model.train.sinks import NullSink  # noqa: E402
from ris_model.train.trainer import Trainer, never_stop  # noqa: E402

ROUTES = ("atom_norms", "image", "refine")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE model-config overrides (values parsed as JSON where they parse, e.g. false, 0)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def joint_config(batch_size: int, n_batches: int, model: dict | None = None) -> tuple[PhaseConfig, TrainingJobConfig]:
    """The benches' training setup: one `joint` epoch of `n_batches` batches, every loss term on, EMA, bf16."""
    phase = PhaseConfig(name="joint", epochs=1, ema_decay=0.999, amp=True,
                        loss_weights=LossWeights(lam_cov=0.5, lam_k=1.0, lam_aux=1.0, lam_gap=0.05, lam_margin=0.05))
    data = DataConfig(n_train=batch_size * n_batches, n_val=64, batch_size=batch_size)
    return phase, TrainingJobConfig(data=data, phases=(phase,), model=model or {})


def measure(batch_size: int, steps: int, device: torch.device, architecture: str, model: dict | None = None,
            routes: FusedRoutes = ALL_FUSED) -> dict:
    steps = max(steps, 5)  # the warm-up draws batches 0..4 of the same epoch
    phase, config = joint_config(batch_size, steps, {"architecture": architecture, **(model or {})})
    with tempfile.TemporaryDirectory() as tmp:
        net = RisNet(config.system, config.model, routes)
        trainer = Trainer(config, net, NullSink(), device, checkpoint_dir=Path(tmp))
        trainer._setup_phase(phase)
        for b in range(5):  # warm-up (compilation, graph capture)
            trainer._train_step(phase, trainer.scenes.train_batch(0, b), take_step=True)
        _sync(device)
        # the trainer's own epoch loop: next-batch prefetch, sampled logging and all
        t0 = time.perf_counter()
        trainer._train_epoch(phase, never_stop)
        _sync(device)
        step_s = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        for b in range(steps):
            trainer.scenes.train_batch(0, b)
        _sync(device)
        gen_s = (time.perf_counter() - t0) / steps
    return {"batch_size": batch_size, "architecture": architecture, "model": model or {}, "step_ms": 1e3 * step_s,
            "samples_per_s": batch_size / step_s, "generation_ms": 1e3 * gen_s,
            "generation_share": gen_s / step_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--architecture", default=ModelConfig().architecture)
    parser.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                        help="ModelConfig overrides, e.g. cuda_graphs=false look_refine_rounds=0")
    parser.add_argument("--torch-route", nargs="*", default=[], choices=ROUTES,
                        help="fused look-pass routes to turn off")
    parser.add_argument("--out", type=Path, default=Path("var/bench-train.json"))
    args = parser.parse_args()
    routes = FusedRoutes(**{route: route not in args.torch_route for route in ROUTES})
    device = torch.device(args.device)
    default_batch = TrainingJobConfig().data.batch_size
    batches = args.batches or ([64, 256, default_batch] if device.type == "cuda" else [64, 256])
    overrides = parse_overrides(args.model)
    rows = [measure(b, args.steps, device, args.architecture, overrides, routes) for b in dict.fromkeys(batches)]
    print(f"{'batch':>7} {'step ms':>9} {'samples/s':>11} {'gen ms':>8} {'gen share':>9}")
    for r in rows:
        print(f"{r['batch_size']:>7} {r['step_ms']:>9.2f} {r['samples_per_s']:>11.0f} {r['generation_ms']:>8.2f} "
              f"{r['generation_share']:>9.2f}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "torch_routes": args.torch_route,
                                    "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
