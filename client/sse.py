"""A server-sent events parser (the WHATWG `text/event-stream` format) over an iterator of lines.

`parse_events(lines)` yields one `SseEvent` per dispatched event: `data` lines joined with newlines, `event`
defaulting to "message", `id` the last event id in force (None until the stream sets one). Comment lines
(`: ping`) and events without data are skipped, as a browser's EventSource does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None = None


def parse_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events from the stream's lines (without their line endings). A last event without its closing blank line
    is not dispatched: the connection dropped in the middle of it."""
    event = ""
    data: list[str] = []
    retry_ms: int | None = None
    last_id: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event=event or "message", data="\n".join(data), id=last_id, retry_ms=retry_ms)
            event, data, retry_ms = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit():
            retry_ms = int(value)
