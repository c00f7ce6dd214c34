"""Command line of the science package: train a model, diagnose a training setup, evaluate a checkpoint.

  python -m ris_model train    --out DIR [--config FILE.json] [--device cuda] [--resume CHECKPOINT]
  python -m ris_model diagnose --out DIR [--config FILE.json | --preset quickstart] [--device cuda]
  python -m ris_model evaluate --checkpoint PATH --out DIR [--config FILE.json] [--device cuda]

train and diagnose write metrics (JSON lines) and checkpoints to DIR with a progress bar; diagnose also writes
its verdict as report.json and report.md and prints the verdict line (an aborted run too). evaluate writes
report.json, report.md and the PNG plots. `--print-default-config` prints a valid config to edit. A config file
with a `debug` section runs with the fault injection it asks for (NaN loss terms, slow steps; for testing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from api_schemas import (
    CheckpointInfo,
    DiagnosticJobConfig,
    DiagnosticReport,
    EvaluationConfig,
    MetricPoint,
    TrainingJobConfig,
    quickstart_diagnostic,
)
from api_schemas import metrics as keys
from ris_model.errors import RisModelError
from ris_model.train.fault_hooks import DebugHooks
from ris_model.train.hooks import NO_HOOKS
from ris_model.train.jobs import run_training_job
from ris_model.train.sinks import JsonlSink

_EPOCH_KEYS = (keys.TRAIN_EPOCH_LOSS, keys.VAL_K_ACC, keys.VAL_K_UNDER, keys.VAL_K_OVER,
               keys.VAL_RMSE_AZIMUTH_DEG, keys.VAL_RMSE_RANGE_M, keys.TRAIN_NONFINITE_SKIPPED,
               keys.TRAIN_SAMPLES_PER_S)


class ProgressSink:
    """JSON lines to DIR plus a tqdm bar driven by `progress/fraction`, and one line per epoch."""

    def __init__(self, out_dir: Path) -> None:
        self.jsonl = JsonlSink(out_dir)
        self.bar = tqdm(total=1000, unit="‰", dynamic_ncols=True, file=sys.stderr)
        self.nonfinite = 0

    def log_metrics(self, points: Sequence[MetricPoint]) -> None:
        self.jsonl.log_metrics(points)
        epoch_values = {}
        for p in points:
            if p.key == keys.PROGRESS_FRACTION:
                self.bar.update(int(p.value * 1000) - self.bar.n)
            elif p.key.startswith(keys.NONFINITE_CAUSE_PREFIX):
                self.nonfinite += 1
                self.bar.set_postfix(nonfinite=self.nonfinite)
            if p.key in _EPOCH_KEYS:
                epoch_values[p.key] = p.value
        if keys.VAL_K_ACC in epoch_values:
            p0 = points[0]
            line = " ".join(f"{k}={v:.4g}" for k, v in epoch_values.items())
            self.bar.write(f"[{p0.phase} epoch {p0.epoch} step {p0.step}] {line}")

    def log_checkpoint(self, info: CheckpointInfo) -> None:
        self.jsonl.log_checkpoint(info)

    def close(self) -> None:
        self.bar.close()
        self.jsonl.close()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option with its default; descriptions keep their line breaks."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ris_model", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        ("train", "run a phase-training job: every phase of the config, checkpoints after every epoch"),
        ("diagnose", "run a diagnostic job: a short training run, then ten automatic checks and a verdict"),
    )
    for name, help_text in commands:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        p.add_argument("--config", type=Path, default=None,
                       help="a JSON job config (fields as in --print-default-config); none: the defaults")
        p.add_argument("--out", type=Path, default=None,
                       help="output directory for config.json, metrics.jsonl, checkpoints.jsonl and checkpoints/")
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; none: cuda where available, else cpu")
        p.add_argument("--resume", type=Path, default=None, help="a checkpoint of the same config to resume from")
        if name == "diagnose":
            p.add_argument("--preset", choices=["quickstart"], default=None,
                           help="quickstart: a diagnostic small enough for about two minutes on a 2-core CPU "
                                "(instead of --config)")
        p.add_argument("--print-default-config", action="store_true",
                       help="print the config the command would run (JSON) and exit")
    help_text = "evaluate a checkpoint against the classical baselines on test scenes of its own system"
    p = sub.add_parser("evaluate", help=help_text, description=help_text, formatter_class=_HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint file (.pt) written by train")
    p.add_argument("--out", type=Path, required=True, help="output directory for report.json, report.md and PNGs")
    p.add_argument("--config", type=Path, default=None,
                   help="a JSON evaluation config (scenes, baselines, tolerances); none: the defaults")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; none: the device the checkpoint loads on")
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("ris-jobs")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _load_config(args: argparse.Namespace) -> BaseModel:
    """The command's config: the preset, the file given, or the defaults.

    Raises:
        ValidationError: the file is not a valid config (the message names the field).
        OSError: the file cannot be read.
    """
    models: dict[str, type[BaseModel]] = {"diagnose": DiagnosticJobConfig, "train": TrainingJobConfig,
                                          "evaluate": EvaluationConfig}
    model = models[args.command]
    if getattr(args, "preset", None) == "quickstart":
        return quickstart_diagnostic()
    if args.config is None:
        return model()
    return model.model_validate_json(args.config.read_text())


def _config_or_exit_code(args: argparse.Namespace) -> BaseModel | int:
    try:
        return _load_config(args)
    except ValidationError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"cannot read config: {exc}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command == "train" and "--preset" in unknown:
            parser.error("train has no presets: the quickstart preset is a diagnostic "
                         "(python -m ris_model diagnose --preset quickstart)")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "preset", None) is not None and args.config is not None:
        parser.error("give either --preset or --config, not both")
    config = _config_or_exit_code(args)
    if isinstance(config, int):
        return config
    if args.command == "evaluate":
        return _evaluate(args, config)  # type: ignore[arg-type]
    assert isinstance(config, TrainingJobConfig)
    if args.print_default_config:
        return _print(json.dumps(config.model_dump(mode="json"), indent=2))
    if args.out is None:
        print("--out DIR is required", file=sys.stderr)
        return 2
    try:
        hooks = DebugHooks(config.debug) if "debug" in config.model_fields_set else NO_HOOKS
    except ValueError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    sink = ProgressSink(args.out)
    try:
        result = run_training_job(config, sink=sink, checkpoint_dir=args.out / "checkpoints", device=args.device,
                                  resume_from=args.resume, hooks=hooks)
    except RisModelError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        report = getattr(exc, "report", None)  # a diagnostic aborted by non-finite steps still has its verdict
        if report is not None:
            _write_report(args.out, report)
        return 1
    finally:
        sink.close()
    final = result.final_checkpoint
    print(f"done: {result.global_step} steps, {result.nonfinite_total} non-finite steps skipped; "
          f"final checkpoint {final.path if final else '-'}")
    if result.report is not None:
        _write_report(args.out, result.report)
    return 0


def _print(text: str) -> int:
    """Print `text` to stdout; a reader that closes the pipe early (`| head`) ends the command quietly."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit: point it at /dev/null so that flush cannot fail
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """report.json and report.md (the same rendering as GET /v1/jobs/{id}/report?format=md), then the verdict."""
    parsed = DiagnosticReport.model_validate(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(parsed.to_markdown())
    print(f"verdict: {parsed.verdict.status} — {parsed.verdict.decision}")
    print(f"report: {out_dir / 'report.json'}, {out_dir / 'report.md'}")


def _evaluate(args: argparse.Namespace, config: EvaluationConfig) -> int:
    """`evaluate`: the report and plots of one checkpoint, with a progress bar."""
    from ris_model.evaluate.evaluation import evaluate
    from ris_model.evaluate.plots import render_plots  # matplotlib only when evaluating

    bar = tqdm(total=1000, unit="‰", dynamic_ncols=True, file=sys.stderr)

    def progress(fraction: float, stage: str) -> None:
        bar.set_postfix_str(stage)
        bar.update(int(fraction * 1000) - bar.n)

    try:
        report = evaluate(args.checkpoint, config, device=args.device, progress=progress)
    except (RisModelError, ValueError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in render_plots(report).items():
        (args.out / name).write_bytes(data)
    (args.out / "report.md").write_text(report.to_markdown())
    (args.out / "report.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    overall = report.by_snr[-1]
    print(" ".join(f"{m.method}: K_acc={m.k_acc:.3f}" for m in overall.methods if m.k_acc is not None))
    print(f"report: {args.out / 'report.md'}")
    return 0
