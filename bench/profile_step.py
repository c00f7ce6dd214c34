"""Profile one `joint` training step (torch.profiler): the top CUDA kernels by time. Not a test.

    python3 bench/profile_step.py [--batch 4096] [--model KEY=VALUE ...] [--out var/profile-step.txt]

Also counts the host synchronizations of one step (torch.cuda.set_sync_debug_mode) by source line.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train import joint_config, parse_overrides  # noqa: E402  (bench/train.py, the same folder)

from ris_model.model.network import RisNet  # noqa: E402
from ris_model.train.sinks import NullSink  # noqa: E402
from ris_model.train.trainer import Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("var/profile-step.txt"))
    args = parser.parse_args()
    device = torch.device("cuda")
    phase, config = joint_config(args.batch, 20, parse_overrides(args.model))
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
        # host synchronizations of one step, by the Python line that caused them
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer._train_step(phase, trainer.scenes.train_batch(0, 10), take_step=True)
            torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("default")
    syncs = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message))
    sync_report = f"host synchronizations in one step: {sum(syncs.values())}\n" + "\n".join(
        f"  {n:>3}  {where}" for where, n in syncs.most_common())
    print(sync_report)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40)
    cpu_table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    print(table)
    print(cpu_table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(sync_report + "\n\n" + table + "\n\n" + cpu_table)


if __name__ == "__main__":
    main()
