"""Experiment (not a test, not the product's route): would `torch.compile` of the graphed trainable part
(forward from the prepared inputs + loss, and its backward) pay for itself? Its ~1,000 kernels are each
launch-latency bound even inside a CUDA graph, which inductor's fusion would cut.

    python3 bench/compile_trainable.py [--batch 4096] [--steps 30] [--out var/bench-compile-trainable.json]

Builds the default trainer twice — as shipped, and with the graphed module's forward wrapped in torch.compile
before capture (the Jacobi eigensolver kept out of the compiled graph) — and reports, for each, the time of the
five warm-up steps (compilation + capture) and samples/s of one epoch of the trainer's own loop. Writes JSON.
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
from train import joint_config  # noqa: E402  (bench/train.py, the same folder)

import ris_model.accel.graphed_step as graphed_step  # noqa: E402
import ris_model.spectral as spectral  # noqa: E402
from ris_model.model.network import RisNet  # noqa: E402
from ris_model.train.sinks import NullSink  # noqa: E402
from ris_model.train.trainer import Trainer, never_stop  # noqa: E402


class _CompiledStepLoss(graphed_step._StepLoss):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.forward = torch.compile(self.forward)  # type: ignore[method-assign]


def measure(batch: int, steps: int, compiled: bool) -> dict:
    graphed_step._StepLoss = _CompiledStepLoss if compiled else _original_step_loss
    phase, config = joint_config(batch, steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RisNet(config.system, config.model), NullSink(), "cuda", checkpoint_dir=Path(tmp))
        trainer._setup_phase(phase)
        t0 = time.perf_counter()
        for b in range(5):
            trainer._train_step(phase, trainer.scenes.train_batch(0, b), take_step=True)
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer._train_epoch(phase, never_stop)
        torch.cuda.synchronize()
        step_s = (time.perf_counter() - t0) / steps
    return {"compiled": compiled, "batch": batch, "warmup_s": warmup_s, "step_ms": step_s * 1e3,
            "samples_per_s": batch / step_s, "graph_disabled": trainer.graphed.disabled_reason}


_original_step_loss = graphed_step._StepLoss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("var/bench-compile-trainable.json"))
    args = parser.parse_args()
    # the Jacobi sweeps stay eager inside the compiled graph (their rounds are compiled kernels of their own)
    spectral.hermitian_eigenvectors = torch.compiler.disable(spectral.hermitian_eigenvectors)
    rows = [measure(args.batch, args.steps, compiled) for compiled in (False, True)]
    for r in rows:
        print(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
