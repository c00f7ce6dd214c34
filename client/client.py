"""`Client`: the ris-jobs HTTP API from Python, typed with the api_schemas wire models.

Every method maps to one endpoint family of the API (ARCHITECTURE.md, "HTTP API"); errors are the typed exceptions of
`client.errors`. Streams resume where they stopped: `stream_metrics` reconnects with `Last-Event-ID` after a
dropped connection and yields every metric point once, in seq order; `download` continues a `.part` file with
`Range`/`If-Range`, checks the sha256 the server announced (`ETag`) and renames the file into place atomically.

Imports only api_schemas, httpx and the standard library (no torch): `pip install ris-jobs` without the worker
extra is enough to use it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from api_schemas import (
    CheckpointPublic,
    CheckpointUploadPublic,
    Failure,
    JobEvent,
    JobKind,
    JobPublic,
    JobsPage,
    JobState,
    MetricsPage,
    StoredMetricPoint,
)
from client.errors import ChecksumMismatch, WaitTimeout, raise_for_problem
from client.sse import parse_events

#: Where the API listens when neither an argument nor RIS_JOBS_URL says otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
#: The header that carries the API key.
API_KEY_HEADER = "X-API-Key"
#: Bytes per read and per write of a download.
DOWNLOAD_CHUNK_BYTES = 1 << 20
#: Longest silence on an event stream before the read fails and the stream reconnects, seconds (the server
#: sends a comment ping every 15 s).
STREAM_READ_TIMEOUT_S = 60.0

ProgressCallback = Callable[[JobPublic], None]
BytesCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class StateChange:
    """A `state` event of the metric stream: the job's state (and failure, once it failed)."""

    state: JobState
    failure: Failure | None = None

    @classmethod
    def from_json(cls, data: str) -> StateChange:
        body = json.loads(data)
        failure = Failure.model_validate(body["failure"]) if body.get("failure") else None
        return cls(state=JobState(body["state"]), failure=failure)


#: What `Client.stream_metrics` yields.
StreamItem = StoredMetricPoint | StateChange


def _job_path(job_id: str, *parts: str) -> str:
    """`/v1/jobs/<id>/<parts...>`, each segment percent-encoded (an id or name can never add a path level)."""
    return "/".join(("/v1/jobs", *(quote(p, safe="") for p in (job_id, *parts))))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _etag_sha256(response: httpx.Response) -> str | None:
    """The sha256 in a checkpoint's `ETag: "<sha256>"`, or None when the header is absent."""
    tag = response.headers.get("ETag")
    return tag.removeprefix("W/").strip('"') if tag else None


class Client:
    """A client of one ris-jobs API.

    Args:
        url: the API's base URL, e.g. http://127.0.0.1:8000.
        api_key: sent as X-API-Key on every request; None when the server has no keys configured.
        timeout_s: connect/read/write timeout of ordinary requests, seconds.
        transport: an httpx transport (tests, proxies); None for the default.
        max_reconnects: consecutive failed reconnects of an event stream before the error is raised.
        reconnect_delay_s: pause before each reconnect, seconds (doubles per consecutive failure, up to 10 s).
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None, max_reconnects: int = 10,
                 reconnect_delay_s: float = 0.5) -> None:
        headers = {"User-Agent": "ris-jobs-client/0.1"}
        if api_key:
            headers[API_KEY_HEADER] = api_key
        self.url = url.rstrip("/")
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    # -- lifecycle --

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        raise_for_problem(response)
        return response

    # -- jobs --

    def submit(self, kind: JobKind | str, config: BaseModel | Mapping[str, Any] | None = None, *,
               preset: str | None = None, name: str | None = None, idempotency_key: str | None = None,
               max_attempts: int | None = None) -> JobPublic:
        """Submit a job (POST /v1/jobs) and return it, QUEUED.

        Args:
            kind: diagnostic, training or evaluation.
            config: the job's config (an api_schemas config model or its JSON as a dict); None for the kind's
                defaults (evaluation has none: it needs the checkpoint to evaluate).
            preset: a named config instead of `config` (diagnostic: "quickstart").
            name: a label shown in listings.
            idempotency_key: the same key with the same body returns the same job instead of a second one.
            max_attempts: attempts before a lost worker fails the job (server default 2).
        """
        body: dict[str, Any] = {"kind": JobKind(kind).value}
        if config is not None:
            body["config"] = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        if preset is not None:
            body["preset"] = preset
        if name is not None:
            body["name"] = name
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return JobPublic.model_validate_json(self._request("POST", "/v1/jobs", json=body, headers=headers).content)

    def get(self, job_id: str) -> JobPublic:
        """One job: state, progress, latest metrics, non-finite steps, failure."""
        return JobPublic.model_validate_json(self._request("GET", _job_path(job_id)).content)

    def list_jobs(self, *, state: JobState | str | None = None, kind: JobKind | str | None = None,
                  limit: int = 50, page_token: str | None = None) -> JobsPage:
        """One page of jobs, newest first; pass the page's `next_page_token` back for the next one."""
        params: dict[str, str | int] = {"limit": limit}
        if state is not None:
            params["state"] = JobState(state).value
        if kind is not None:
            params["kind"] = JobKind(kind).value
        if page_token is not None:
            params["page_token"] = page_token
        return JobsPage.model_validate_json(self._request("GET", "/v1/jobs", params=params).content)

    def iter_jobs(self, *, state: JobState | str | None = None, kind: JobKind | str | None = None,
                  page_size: int = 100) -> Iterator[JobPublic]:
        """Every job that matches the filters, newest first, fetched page by page."""
        token: str | None = None
        while True:
            page = self.list_jobs(state=state, kind=kind, limit=page_size, page_token=token)
            yield from page.items
            if page.next_page_token is None:
                return
            token = page.next_page_token

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's state transitions, oldest first."""
        response = self._request("GET", _job_path(job_id, "events"))
        return [JobEvent.model_validate(e) for e in response.json()]

    def cancel(self, job_id: str) -> JobPublic:
        """Ask the job to stop: QUEUED → CANCELLED at once, RUNNING → CANCELLING (stops at its next step)."""
        return JobPublic.model_validate_json(self._request("POST", _job_path(job_id, "cancel")).content)

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its metrics, checkpoints and logs (Conflict while it runs)."""
        self._request("DELETE", _job_path(job_id))

    # -- progress --

    def metrics(self, job_id: str, *, since_seq: int = 0, keys: list[str] | None = None, phase: str | None = None,
                limit: int = 1000, max_points: int | None = None) -> MetricsPage:
        """One page of metric history after `since_seq`; continue with `next_since_seq`."""
        params: dict[str, Any] = {"since_seq": since_seq, "limit": limit}
        if keys:
            params["keys"] = ",".join(keys)
        if phase is not None:
            params["phase"] = phase
        if max_points is not None:
            params["max_points"] = max_points
        response = self._request("GET", _job_path(job_id, "metrics"), params=params)
        return MetricsPage.model_validate_json(response.content)

    def iter_metrics(self, job_id: str, *, keys: list[str] | None = None, since_seq: int = 0
                     ) -> Iterator[StoredMetricPoint]:
        """Every stored metric point after `since_seq`, in seq order."""
        while True:
            page = self.metrics(job_id, since_seq=since_seq, keys=keys, limit=10_000)
            yield from page.points
            if page.next_since_seq is None:
                return
            since_seq = page.next_since_seq

    def stream_metrics(self, job_id: str, *, last_event_id: int | None = None, reconnect: bool = True,
                       read_timeout_s: float = STREAM_READ_TIMEOUT_S) -> Iterator[StreamItem]:
        """The job's live metric stream (SSE): StoredMetricPoint for each point, StateChange for each new
        state. Ends when the server closes the stream after the job reached a terminal state.

        A dropped connection (network error, server restart) is reopened with `Last-Event-ID` set to the last
        seq received, so every point arrives exactly once and in order; after `max_reconnects` consecutive
        failures the transport error is raised. `last_event_id` starts after that seq.
        """
        last_seq = last_event_id or 0
        last_state: JobState | None = None
        failures = 0
        while True:
            terminal = False
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_seq:
                headers["Last-Event-ID"] = str(last_seq)
            timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
            try:
                with self._http.stream("GET", _job_path(job_id, "metrics", "stream"), headers=headers,
                                       timeout=timeout) as response:
                    raise_for_problem(response)
                    for event in parse_events(response.iter_lines()):
                        failures = 0
                        if event.event == "metric":
                            point = StoredMetricPoint.model_validate_json(event.data)
                            if point.seq <= last_seq:
                                continue  # already delivered before a reconnect
                            last_seq = point.seq
                            yield point
                        elif event.event == "state":
                            change = StateChange.from_json(event.data)
                            terminal = change.state.is_terminal()
                            if change.state != last_state:
                                last_state = change.state
                                yield change
                if terminal:
                    return
            except httpx.TransportError:
                if not reconnect or failures >= self.max_reconnects:
                    raise
            else:
                if not reconnect:
                    return
            failures += 1
            time.sleep(min(10.0, self.reconnect_delay_s * 2 ** (failures - 1)))

    def wait(self, job_id: str, *, timeout_s: float | None = None, poll_interval_s: float = 1.0,
             on_progress: ProgressCallback | None = None, stream: bool = True) -> JobPublic:
        """Block until the job is SUCCEEDED, FAILED or CANCELLED, and return it.

        Args:
            timeout_s: give up (WaitTimeout) after this many seconds; None waits as long as it takes.
            poll_interval_s: with `stream`, the longest time between two progress callbacks while metrics
                arrive; without it, the time between two polls of the job.
            on_progress: called with the job each time it is read (at least at every state change).
            stream: follow the SSE metric stream (reads the job on each state change); False polls instead.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def remaining_s() -> float:
            if deadline is None:
                return STREAM_READ_TIMEOUT_S
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} did not finish within {timeout_s} s")
            return left

        def read() -> JobPublic:
            job = self.get(job_id)
            if on_progress is not None:
                on_progress(job)
            return job

        job = read()
        if job.state.is_terminal():
            return job
        if stream:
            last_read = time.monotonic()
            try:
                # with a deadline, a silent or dropped stream falls back to polling (which keeps the deadline)
                for item in self.stream_metrics(job_id, reconnect=deadline is None,
                                                read_timeout_s=min(remaining_s(), STREAM_READ_TIMEOUT_S)):
                    remaining_s()
                    if isinstance(item, StateChange) or time.monotonic() - last_read >= poll_interval_s:
                        job, last_read = read(), time.monotonic()
            except httpx.TransportError:
                remaining_s()  # WaitTimeout once the deadline passed; else poll from here
            job = read()
        while not job.state.is_terminal():
            time.sleep(min(poll_interval_s, remaining_s()))
            job = read()
        return job

    def logs(self, job_id: str, *, offset: int = 0, follow: bool = False, poll_interval_s: float = 1.0
             ) -> Iterator[str]:
        """The job's log text from byte `offset`. With `follow`, keeps reading until the job has finished and
        its last bytes were read (like `tail -f` that stops at the end)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finished = False
        while True:
            response = self._request("GET", _job_path(job_id, "logs"), params={"offset": offset})
            offset = int(response.headers.get("X-Next-Offset", offset + len(response.content)))
            if response.content:
                text = decoder.decode(response.content)
                if text:
                    yield text
                continue
            if not follow or finished:
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail
                return
            finished = self.get(job_id).state.is_terminal()
            if not finished:
                time.sleep(poll_interval_s)

    # -- results --

    def checkpoints(self, job_id: str) -> list[CheckpointPublic]:
        """The job's checkpoints by step (listed while the job runs too)."""
        response = self._request("GET", _job_path(job_id, "checkpoints"))
        return [CheckpointPublic.model_validate(c) for c in response.json()]

    def download(self, job_id: str, name: str = "final", dest: str | os.PathLike[str] | None = None, *,
                 on_bytes: BytesCallback | None = None) -> Path:
        """Download a checkpoint (`final`, `latest` or a listed name) and return its path.

        The file is written to `<dest>.part` first; an existing `.part` is continued with a Range request
        (If-Range: the server sends the whole file instead when the checkpoint changed since). The sha256 of
        the finished file must equal the server's ETag, else the `.part` is removed and ChecksumMismatch is
        raised; then it is renamed to `dest` atomically.

        Args:
            dest: a file path, or a directory for `<job_id>-<name>.pt` in it; None for that name in the current
                directory.
            on_bytes: called with (bytes written so far, total bytes) after each chunk.
        """
        filename = f"{job_id}-{name}.pt"
        target = Path(dest) if dest is not None else Path.cwd() / filename
        if target.is_dir():
            target = target / filename
        part = target.with_name(target.name + ".part")
        url = _job_path(job_id, "checkpoints", name)
        head = self._request("HEAD", url)
        announced = _etag_sha256(head)
        have = part.stat().st_size if part.exists() else 0
        total = int(head.headers.get("Content-Length", "0"))
        headers: dict[str, str] = {}
        if announced is not None and 0 < have < total:
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{announced}"'}
        with self._http.stream("GET", url, headers=headers) as response:
            raise_for_problem(response)
            expected = _etag_sha256(response) or announced
            resumed = response.status_code == 206
            done = have if resumed else 0
            if not resumed:
                total = int(response.headers.get("Content-Length", total))
            with part.open("ab" if resumed else "wb") as out:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    out.write(chunk)
                    done += len(chunk)
                    if on_bytes is not None:
                        on_bytes(done, total)
                out.flush()
                os.fsync(out.fileno())
        actual = _sha256_of(part)
        if expected is not None and actual != expected:
            part.unlink()
            raise ChecksumMismatch(expected, actual)
        os.replace(part, target)
        return target

    def report(self, job_id: str) -> dict[str, Any]:
        """The job's report as JSON (a diagnostic's verdict and checks, an evaluation's tables, ...)."""
        body: dict[str, Any] = self._request("GET", _job_path(job_id, "report")).json()
        return body

    def report_markdown(self, job_id: str) -> str:
        """The job's report rendered as Markdown by the server."""
        return self._request("GET", _job_path(job_id, "report"), params={"format": "md"}).text

    def artifact(self, job_id: str, name: str) -> bytes:
        """An output file of the job (a plot or report file named in its report), as bytes."""
        return self._request("GET", _job_path(job_id, "artifacts", name)).content

    def upload_checkpoint(self, path: str | os.PathLike[str]) -> CheckpointUploadPublic:
        """Upload a checkpoint file for evaluation jobs; use the returned `upload_id` as their checkpoint."""
        with Path(path).open("rb") as body:
            response = self._request("POST", "/v1/checkpoints", content=body,
                                     headers={"Content-Type": "application/octet-stream"})
        return CheckpointUploadPublic.model_validate_json(response.content)
