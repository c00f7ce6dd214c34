"""The user commands of `ris-jobs`: submit, list, status, watch, logs, checkpoints, download, report, cancel,
delete, upload. They talk to a running API through `client.Client` and import no torch.

`add_commands(subparsers)` adds them to a parser (the `ris-jobs` entry point in worker.cli adds them beside
serve/api/worker/reaper); `main(argv)` runs them on their own (`python -m client`).

Exit codes: 0 done (a job that ended SUCCEEDED, or is still running); 1 the job FAILED; 3 the job was
CANCELLED; 2 usage errors (bad arguments, an unknown job, a config the API refused); 4 the API could not be
reached or answered with a server error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from api_schemas import JobKind, JobPublic, JobState
from client.client import DEFAULT_URL, Client, StateChange
from client.errors import ApiError, ClientError
from client.progress import LiveProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
#: Environment variables that give the defaults of --url and --api-key.
URL_ENV, API_KEY_ENV = "RIS_JOBS_URL", "RIS_JOBS_API_KEY"
#: The presets POST /v1/jobs knows (api_schemas.DiagnosticJobCreate.preset).
PRESETS = ("quickstart",)
EXIT_CODES_HELP = ("exit codes: 0 succeeded (or still running), 1 the job FAILED, 3 the job was CANCELLED, "
                   "2 usage error (bad arguments, unknown job, config refused), 4 API unreachable or server error")

Command = Callable[[argparse.Namespace], int]


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the descriptions' line breaks."""


def exit_code_of(state: JobState) -> int:
    """The process exit code for a job in `state`."""
    return {JobState.FAILED: EXIT_FAILED, JobState.CANCELLED: EXIT_CANCELLED}.get(state, EXIT_OK)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key or os.environ.get(API_KEY_ENV) or None)


def _print_json(data: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(data, indent=2, default=str) + "\n")


def _job_line(job: JobPublic) -> str:
    pct = f"{100 * job.progress.fraction:5.1f}%"
    return f"{job.id}  {job.kind.value:<10} {job.state.value:<10} {pct}  {job.name or ''}"


def _job_details(job: JobPublic) -> str:
    p = job.progress
    lines = [
        f"job       {job.id}", f"kind      {job.kind.value}", f"name      {job.name or '-'}",
        f"state     {job.state.value} (attempt {job.attempt} of {job.max_attempts})",
        f"created   {job.created_at:%Y-%m-%d %H:%M:%S}",
        f"started   {job.started_at:%Y-%m-%d %H:%M:%S}" if job.started_at else "started   -",
        f"finished  {job.finished_at:%Y-%m-%d %H:%M:%S}" if job.finished_at else "finished  -",
        f"progress  {100 * p.fraction:.1f}%  phase {p.phase or '-'}  epoch {p.epoch}  step {p.step}",
        f"non-finite steps skipped: {job.nonfinite_steps.total}",
    ]
    if job.failure is not None:
        lines.append(f"failure   {job.failure.reason.value}: {job.failure.message}")
    if job.latest_metrics:
        lines.append("latest metrics:")
        lines += [f"  {k:<28} {v:.6g}" for k, v in sorted(job.latest_metrics.items())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- commands


def _read_config(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read the config file {path}: {exc.strerror}") from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ClientError(f"{path} must hold a JSON object (the job's config)")
    return config


def cmd_submit(args: argparse.Namespace) -> int:
    config = _read_config(args.config) if args.config else None
    with _client(args) as client:
        job = client.submit(args.kind, config, preset=args.preset, name=args.name,
                            idempotency_key=args.idempotency_key, max_attempts=args.max_attempts)
        if not args.wait:
            _print_json(job.model_dump(mode="json")) if args.json else print(job.id)
            return EXIT_OK
        if not args.json:
            print(job.id, file=sys.stderr)
        job = _watch(client, job, quiet=args.json)
    _print_json(job.model_dump(mode="json")) if args.json else print(_job_details(job))
    return exit_code_of(job.state)


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.all:
            jobs = list(client.iter_jobs(state=args.state, kind=args.kind, page_size=args.limit))
            token = None
        else:
            page = client.list_jobs(state=args.state, kind=args.kind, limit=args.limit, page_token=args.page_token)
            jobs, token = page.items, page.next_page_token
    if args.json:
        _print_json({"items": [j.model_dump(mode="json") for j in jobs], "next_page_token": token})
        return EXIT_OK
    print(f"{'ID':<36}  {'KIND':<10} {'STATE':<10} {'DONE':>6}  NAME")
    for job in jobs:
        print(_job_line(job))
    if token:
        print(f"(more: --page-token {token})", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(args.job_id)
    _print_json(job.model_dump(mode="json")) if args.json else print(_job_details(job))
    return exit_code_of(job.state)


def _watch(client: Client, job: JobPublic, *, quiet: bool = False) -> JobPublic:
    """Follow the job's metric stream with a progress bar on stderr until it ends; return the final job."""
    from tqdm import tqdm  # the progress bar; imported only where it is drawn

    view = LiveProgress.of_job(job)
    resolution = 1000
    with tqdm(total=resolution, file=sys.stderr, disable=quiet, dynamic_ncols=True, mininterval=0.5,
              bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}") as bar:
        bar.set_description_str(view.state.value)
        for item in client.stream_metrics(job.id):
            view.update(item)
            bar.set_postfix_str(view.summary(), refresh=False)
            if isinstance(item, StateChange):
                bar.set_description_str(item.state.value, refresh=False)
                if item.failure is not None:
                    bar.write(f"{item.state.value}: {view.failure}")
            bar.update(round(view.fraction * resolution) - bar.n)  # redraws at most every mininterval
        bar.refresh()
    return client.get(job.id)


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(args.job_id)
        if args.json:
            for item in client.stream_metrics(job.id):
                if isinstance(item, StateChange):
                    failure = item.failure.model_dump(mode="json") if item.failure else None
                    row: dict[str, Any] = {"event": "state", "state": item.state.value, "failure": failure}
                else:
                    row = {"event": "metric", **item.model_dump(mode="json")}
                sys.stdout.write(json.dumps(row) + "\n")
                sys.stdout.flush()
            job = client.get(job.id)
        else:
            job = _watch(client, job)
            print(_job_details(job))
    return exit_code_of(job.state)


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for text in client.logs(args.job_id, offset=args.offset, follow=args.follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with _client(args) as client:
        checkpoints = client.checkpoints(args.job_id)
    if args.json:
        _print_json([c.model_dump(mode="json") for c in checkpoints])
        return EXIT_OK
    print(f"{'NAME':<24} {'PHASE':<10} {'EPOCH':>5} {'STEP':>7} {'BYTES':>10}  SHA256")
    for c in checkpoints:
        print(f"{c.name:<24} {c.phase:<10} {c.epoch:>5} {c.step:>7} {c.size:>10}  {c.sha256}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.json or not sys.stderr.isatty():
            path = client.download(args.job_id, args.name, args.output)
        else:
            from tqdm import tqdm

            with tqdm(total=0, unit="B", unit_scale=True, file=sys.stderr, desc=args.name) as bar:
                def advance(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                path = client.download(args.job_id, args.name, args.output, on_bytes=advance)
    _print_json({"path": str(path)}) if args.json else print(path)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.md:
            sys.stdout.write(client.report_markdown(args.job_id))
        else:
            _print_json(client.report(args.job_id))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
        if args.wait:
            job = client.wait(job.id)
    _print_json(job.model_dump(mode="json")) if args.json else print(f"{job.id} {job.state.value}")
    return exit_code_of(job.state) if args.wait else EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.job_id)
    _print_json({"deleted": args.job_id}) if args.json else print(f"deleted {args.job_id}")
    return EXIT_OK


def cmd_upload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        upload = client.upload_checkpoint(args.file)
    _print_json(upload.model_dump(mode="json")) if args.json else print(upload.upload_id)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser


def _connection_options() -> argparse.ArgumentParser:
    """--url, --api-key and --json, accepted by every user command."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                       help=f"the API's base URL (environment: {URL_ENV})")
    group.add_argument("--api-key", default=None, metavar="KEY",  # the environment's key is read later: never shown
                       help=f"sent as X-API-Key; needed when the server has API keys (environment: {API_KEY_ENV})")
    group.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    return common


def _job_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="ID", help="the job's id (as printed by submit or list)")


def add_commands(sub: Any) -> None:
    """Add the user commands to `sub`, the object `ArgumentParser.add_subparsers()` returned."""
    common = _connection_options()

    def command(name: str, func: Command, summary: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=summary, description=f"{summary}.\n\n{description}", parents=[common],
            formatter_class=_Help, epilog=EXIT_CODES_HELP)
        parser.set_defaults(func=func)
        return parser

    p = command("submit", cmd_submit, "submit a job",
                "Prints the new job's id (with --json: the whole job, whose `id` field scripts read).\n"
                "Without --config and --preset the kind's default config is used (evaluation needs --config:\n"
                "it names the checkpoint to evaluate).\n\n"
                "example: ris-jobs submit diagnostic --preset quickstart --wait")
    p.add_argument("kind", choices=[k.value for k in JobKind], help="what the job does")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=PRESETS, default=None,
                        help="a named config (diagnostic only; quickstart finishes in about two minutes on a CPU)")
    source.add_argument("--config", metavar="FILE", default=None,
                        help="the job's config as a JSON file ('-' reads standard input)")
    p.add_argument("--name", default=None, help="a label shown in listings and on the dashboard")
    p.add_argument("--idempotency-key", default=None, metavar="KEY",
                   help="submitting again with the same key and body returns the same job")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="attempts before a lost worker fails the job (server default: 2)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job with a progress bar until it ends; the exit code tells how it ended")

    p = command("list", cmd_list, "list jobs, newest first", "One page at a time; --all follows every page.")
    p.add_argument("--state", choices=[s.value for s in JobState], default=None, help="only jobs in this state")
    p.add_argument("--kind", choices=[k.value for k in JobKind], default=None, help="only jobs of this kind")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="jobs per page (1-500)")
    p.add_argument("--page-token", default=None, metavar="TOKEN", help="the next page (printed after a page)")
    p.add_argument("--all", action="store_true", help="every matching job, all pages")

    p = command("status", cmd_status, "show one job",
                "State, progress, latest metrics, skipped non-finite steps and the failure, if any.")
    _job_id(p)

    p = command("watch", cmd_watch, "follow a job live until it ends",
                "A progress bar from the job's metric stream: state, percent done, ETA, phase, epoch, step,\n"
                "loss, K accuracy and skipped non-finite steps. With --json, one JSON line per event.\n"
                "A dropped connection is resumed where it stopped.")
    _job_id(p)

    p = command("logs", cmd_logs, "print a job's log", "With -f, keeps printing until the job has ended.")
    _job_id(p)
    p.add_argument("-f", "--follow", action="store_true", help="follow the log until the job ends")
    p.add_argument("--offset", type=int, default=0, metavar="BYTES", help="start at this byte offset")

    p = command("checkpoints", cmd_checkpoints, "list a job's checkpoints", "Name, phase, epoch, step, size, sha256.")
    _job_id(p)

    p = command("download", cmd_download, "download a checkpoint",
                "Resumes an interrupted download (<file>.part), checks the file's sha256 against the server's\n"
                "and moves it into place only when it matches.")
    _job_id(p)
    p.add_argument("name", nargs="?", default="final", help="checkpoint name, or the alias final or latest")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="file or directory to write (default: ./<ID>-<NAME>.pt)")

    p = command("report", cmd_report, "print a job's report",
                "JSON by default (a diagnostic's verdict and checks, an evaluation's tables); --md for Markdown.")
    _job_id(p)
    p.add_argument("--md", action="store_true", help="the server's Markdown rendering instead of JSON")

    p = command("cancel", cmd_cancel, "cancel a job",
                "A queued job is cancelled at once; a running one stops at its next step.")
    _job_id(p)
    p.add_argument("--wait", action="store_true", help="wait until the job has stopped")

    p = command("delete", cmd_delete, "delete a finished job",
                "Removes the job with its metrics, checkpoints and logs (refused while it runs).")
    _job_id(p)

    p = command("upload", cmd_upload, "upload a checkpoint file for evaluation jobs",
                "Prints the upload id; name it in an evaluation config as {\"checkpoint\": {\"upload_id\": ...}}.")
    p.add_argument("file", help="a .pt file written by ris-jobs (torch.save)")


#: The names `add_commands` adds (worker.cli dispatches these here).
COMMANDS = ("submit", "list", "status", "watch", "logs", "checkpoints", "download", "report", "cancel", "delete",
            "upload")


def run(args: argparse.Namespace) -> int:
    """Run a parsed user command; API and connection errors become a message on stderr and an exit code."""
    func: Command = args.func
    try:
        return func(args)
    except ApiError as exc:
        print(f"ris-jobs: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.status >= 500 else EXIT_USAGE
    except httpx.TransportError as exc:
        print(f"ris-jobs: cannot reach the API at {args.url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ClientError as exc:
        print(f"ris-jobs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ris-jobs", description=__doc__, formatter_class=_Help)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
