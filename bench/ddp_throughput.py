"""Data-parallel training throughput: samples/s of the trainer at a fixed batch per GPU on 1 GPU and on N GPUs
in one run, and the val K_acc of the same short run for each (docs/ARCHITECTURE.md "Multi-GPU training").

    python3 bench/ddp_throughput.py [--gpus N] [--batch-per-gpu 4096] [--steps-per-epoch 25] [--epochs 3]
                                    [--val-scenes 4096] [--cuda-graphs on|off] [--device cuda|cpu]
                                    [--out var/bench-ddp.json]

Each world size W runs the same short `joint` training job (every loss term, EMA, bf16 on CUDA) through the
worker's own launcher (worker/launcher.py: this process is rank 0, ranks 1..W-1 are `python -m worker.rank`
children), with `steps-per-epoch` optimizer steps per epoch: W processes see W x batch-per-gpu scenes a step,
so the W-GPU run trains on W times as many scenes in the same number of steps. samples/s is the trainer's own
train/samples_per_s (scenes of all ranks over the epoch's wall time, scene generation included), the median
over the epochs after the first (the first pays for warm-up and CUDA-graph capture); K_acc is the last
epoch's val/K_acc on the same val scenes (4,096 by default). On one GPU the trainer replays CUDA graphs (the default,
--cuda-graphs on); the multi-process path always runs eagerly, so `--cuda-graphs off` gives the like-for-like
scaling of the same eager step. With --gpus 1 (a single-GPU machine) only the 1-GPU run is made.

Prints a table and writes JSON. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # for the rank processes

import torch  # noqa: E402

from api_schemas import DataConfig, LossWeights, PhaseConfig, TrainingJobConfig  # noqa: E402
from api_schemas import metrics as keys  # noqa: E402
from ris_model.train.jobs import run_training_job  # noqa: E402
from ris_model.train.sinks import MemorySink  # noqa: E402
from worker.launcher import RankSpec, rank_group  # noqa: E402


def bench_config(batch: int, world: int, steps: int, epochs: int, cuda_graphs: bool,
                 val_scenes: int) -> TrainingJobConfig:
    phase = PhaseConfig(name="joint", epochs=epochs, lr=1e-3, ema_decay=0.998, amp=True,
                        loss_weights=LossWeights(lam_cov=0.5, lam_k=1.0, lam_aux=1.0, lam_gap=0.05, lam_margin=0.05))
    data = DataConfig(n_train=batch * world * steps, n_val=val_scenes, batch_size=batch, seed=0)
    return TrainingJobConfig(data=data, phases=(phase,), model={"cuda_graphs": cuda_graphs}, log_every_steps=10_000)


def run(world: int, args: argparse.Namespace) -> dict[str, Any]:
    config = bench_config(args.batch_per_gpu, world, args.steps_per_epoch, args.epochs, args.cuda_graphs == "on",
                          args.val_scenes)
    sink = MemorySink()
    with tempfile.TemporaryDirectory() as tmp:
        spec = RankSpec(label=f"bench-ddp-w{world}", kind="training", config=config.model_dump(mode="json"),
                        checkpoint_dir=tmp, device=args.device, world_size=world)
        started = time.perf_counter()
        with rank_group(spec) as group:
            result = run_training_job(config, sink=sink, checkpoint_dir=Path(tmp), device=str(group.device),
                                      dist=group.context)
        wall_s = time.perf_counter() - started
    per_epoch = sink.values(keys.TRAIN_SAMPLES_PER_S)
    steady = per_epoch[1:] or per_epoch
    samples_per_s = statistics.median(steady)
    return {
        "world_size": world, "batch_per_gpu": args.batch_per_gpu, "scenes_per_step": args.batch_per_gpu * world,
        "optimizer_steps": result.global_step, "samples_per_s": samples_per_s,
        "samples_per_s_per_gpu": samples_per_s / world, "samples_per_s_by_epoch": per_epoch,
        "val_k_acc": sink.values(keys.VAL_K_ACC)[-1], "val_loss": sink.values(keys.VAL_LOSS)[-1],
        "nonfinite_skipped": result.nonfinite_total, "wall_s": wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gpus", type=int, default=None, help="N (default: every visible GPU)")
    parser.add_argument("--batch-per-gpu", type=int, default=4096)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--val-scenes", type=int, default=4096)
    parser.add_argument("--cuda-graphs", choices=["on", "off"], default="on")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=Path("var/bench-ddp.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; --device cpu runs the same measurement on CPU processes")
    n = args.gpus or (torch.cuda.device_count() if args.device == "cuda" else 2)
    runs = [run(world, args) for world in sorted({1, n})]
    base = runs[0]["samples_per_s"]
    for r in runs:
        r["speedup_vs_1"] = r["samples_per_s"] / base
        r["scaling_efficiency"] = r["speedup_vs_1"] / r["world_size"]
    machine = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if args.device == "cuda" else [f"cpu x{os.cpu_count()}"])
    out = {"torch": torch.__version__, "device": args.device, "machine": machine, "cuda_graphs": args.cuda_graphs,
           "steps_per_epoch": args.steps_per_epoch, "epochs": args.epochs, "runs": runs}
    print(f"{'GPUs':>4} {'scenes/step':>11} {'samples/s':>11} {'per GPU':>9} {'speedup':>7} {'eff.':>5} "
          f"{'val K_acc':>9} {'wall s':>7}")
    for r in runs:
        print(f"{r['world_size']:>4} {r['scenes_per_step']:>11,} {r['samples_per_s']:>11,.0f} "
              f"{r['samples_per_s_per_gpu']:>9,.0f} {r['speedup_vs_1']:>7.2f} {r['scaling_efficiency']:>5.2f} "
              f"{r['val_k_acc']:>9.3f} {r['wall_s']:>7.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
