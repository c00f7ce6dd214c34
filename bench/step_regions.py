"""Where one `joint` training step spends its time, by region: host time and GPU kernel time of scene
generation, the look pass, the trainable forward, the loss, the backward and the optimizer. Not a test.

    python3 bench/step_regions.py [--batch 4096] [--steps 5] [--out var/step-regions.json]

GPU time of a region = the kernels its host code launched (torch.profiler), CUDA-graph replays included;
host time = wall time of the region's Python code (no synchronization added, so it is the issue time,
except where the region itself synchronizes). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from train import joint_config  # noqa: E402  (bench/train.py, the same folder)

from ris_model.model.network import RisNet  # noqa: E402
from ris_model.train.sinks import NullSink  # noqa: E402
from ris_model.train.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("var/step-regions.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    phase, config = joint_config(args.batch, 40)
    host = collections.defaultdict(float)

    @contextmanager
    def region(name: str):
        t0 = time.perf_counter()
        with record_function(f"region:{name}"):
            yield
        host[name] += time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RisNet(config.system, config.model), NullSink(), device, checkpoint_dir=Path(tmp))
        trainer._setup_phase(phase)
        model, opt, source = trainer.model, trainer.optimizer, trainer.scenes
        graphed = model.backbone.graphed_looks

        def step(b: int) -> None:  # Trainer._train_step's work, region by region
            with region("generate"):
                batch = source.train_batch(0, b)
            with region("forward"), trainer._autocast(phase):
                out = model(batch.y, batch.H, batch.codes, batch.snr_db)
            with region("loss"), trainer._autocast(phase):
                res = trainer._loss(out, batch, phase)
            with region("backward"):
                res.total.backward()
            with region("step"):
                params = [p for p in model.parameters() if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, phase.grad_clip_norm or float("inf"))
                assert bool(torch.isfinite(res.total) & torch.isfinite(norm))
                opt.step()
                opt.zero_grad(set_to_none=True)
                trainer._update_ema(phase)

        model.train()
        for b in range(5):
            step(b)
        torch.cuda.synchronize()
        # the look pass alone (a CUDA-graph replay: GPU-bound), timed with events
        batch = source.train_batch(0, 0)
        y, H = batch.y / batch.y.abs().square().mean().sqrt(), batch.H / batch.H.abs().square().mean().sqrt()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            graphed(model.backbone.look, y, H, batch.codes) if graphed else model.backbone.look(y, H, batch.codes)
        stop.record()
        torch.cuda.synchronize()
        look_ms = start.elapsed_time(stop) / args.steps
        host.clear()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for b in range(5, 5 + args.steps):
                step(b)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / args.steps
    gpu = collections.defaultdict(float)
    for e in prof.events():
        if e.name.startswith("region:"):
            gpu[e.name.removeprefix("region:")] += e.device_time_total / 1e3 / args.steps
    total_gpu = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / args.steps
    result = {"batch": args.batch, "step_ms": wall * 1e3, "samples_per_s": args.batch / wall,
              "look_pass_gpu_ms": look_ms,
              "gpu_kernel_ms_per_step": total_gpu,
              "regions": {k: {"host_ms": host[k] * 1e3 / args.steps, "gpu_ms": gpu.get(k, 0.0)}
                          for k in sorted(set(host) | set(gpu))}}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
