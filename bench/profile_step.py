"""Profile one `joint` training step (torch.profiler): the top CUDA kernels by time. Not a test.

    python3 bench/profile_step.py [--batch 4096] [--out var/profile-step.txt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from api_schemas import DataConfig, LossWeights, PhaseConfig, TrainingJobConfig  # noqa: E402
from ris_model.network import RisNet  # noqa: E402
from ris_model.sinks import NullSink  # noqa: E402
from ris_model.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path("var/profile-step.txt"))
    args = parser.parse_args()
    device = torch.device("cuda")
    phase = PhaseConfig(name="joint", epochs=1, ema_decay=0.999,
                        loss_weights=LossWeights(lam_cov=0.5, lam_k=1.0, lam_aux=1.0, lam_gap=0.05, lam_margin=0.05))
    config = TrainingJobConfig(data=DataConfig(n_train=args.batch * 20, n_val=64, batch_size=args.batch),
                               phases=(phase,))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RisNet(config.system, config.model), NullSink(), device, checkpoint_dir=Path(tmp))
        trainer._setup_phase(phase)
        for b in range(5):
            trainer._train_step(phase, trainer.scenes.train_batch(0, b), take_step=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for b in range(5, 10):
                trainer._train_step(phase, trainer.scenes.train_batch(0, b), take_step=True)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
    cpu_table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    print(table)
    print(cpu_table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n\n" + cpu_table)


if __name__ == "__main__":
    main()
