"""A real HTTP server for streaming tests, an SSE reader that takes one event at a time, and a job's metric stream
opened through both.

Starlette's TestClient hands a streaming body over only once it is complete; a test that must react to an
event before the stream ends runs the app on uvicorn (in a thread of the test process) and reads it with httpx.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """`app` on uvicorn at a free local port; yields the base URL and stops the server on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        thread.join(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class EventReader:
    """SSE events from a streaming response, one at a time (comments, i.e. pings, are skipped)."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next(self) -> dict[str, str] | None:
        """The next event's fields, or None once the stream has ended."""
        fields: dict[str, str] = {}
        for line in self._lines:
            if not line:
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        return fields or None


@contextmanager
def metric_stream(base_url: str, job_id: str, read_timeout_s: float) -> Iterator[EventReader]:
    """GET /v1/jobs/{job_id}/metrics/stream on a served app (200 asserted), read event by event; a read that gets
    nothing for `read_timeout_s` raises."""
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(read_timeout_s)) as client, \
            client.stream("GET", f"/v1/jobs/{job_id}/metrics/stream") as response:
        assert response.status_code == 200
        yield EventReader(response)
