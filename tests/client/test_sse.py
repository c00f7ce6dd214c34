"""The client's event-stream parser and the watch view's folding, on hand-written streams (no service)."""

from __future__ import annotations

from datetime import UTC, datetime

from api_schemas import Failure, FailureReason, JobState, StoredMetricPoint
from client import StateChange
from client.progress import LiveProgress
from client.sse import SseEvent, parse_events


def test_events_ids_comments_and_multiline_data() -> None:
    lines = [": ping", "id: 1", "event: metric", "data: {\"a\":", "data: 1}", "", "", "event: state",
             "data:{}", "retry: 3000", "", "id: 2", "data: x", ""]
    assert list(parse_events(lines)) == [
        SseEvent("metric", '{"a":\n1}', "1"), SseEvent("state", "{}", "1", retry_ms=3000),
        SseEvent("message", "x", "2"),
    ]


def test_a_half_received_event_is_not_dispatched() -> None:
    assert list(parse_events(["id: 7", "event: metric", "data: {\"seq\": 7"])) == []


def test_crlf_line_ends_are_stripped() -> None:
    assert list(parse_events(["id: 3\r", "data: y\r", "\r"])) == [SseEvent("message", "y", "3")]


def _point(seq: int, key: str, value: float, *, step: int = 1, epoch: int = 0) -> StoredMetricPoint:
    return StoredMetricPoint(phase="k_only", epoch=epoch, step=step, key=key, value=value, seq=seq,
                             ts=datetime.now(UTC))


def test_live_progress_keeps_the_latest_loss_k_acc_and_counts_skipped_steps() -> None:
    view = LiveProgress()
    for item in (
        StateChange(JobState.RUNNING),
        _point(1, "train/loss", 3.0), _point(2, "progress/fraction", 0.25),
        _point(3, "nonfinite/cause/loss", 1.0, step=2), _point(4, "nonfinite/term/k", 1.0, step=2),
        _point(5, "train/k_acc", 0.4, step=4, epoch=1), _point(6, "val/k_acc", 0.5, step=4, epoch=1),
        _point(7, "train/k_acc", 0.45, step=8, epoch=2), _point(8, "train/loss", 2.0, step=8, epoch=2),
        StateChange(JobState.FAILED, Failure(reason=FailureReason.NONFINITE_ABORT, message="too many")),
    ):
        view.update(item)
    assert (view.state, view.epoch, view.step, view.fraction) == (JobState.FAILED, 2, 8, 0.25)
    assert (view.loss, view.k_acc, view.nonfinite) == (2.0, 0.5, 1)  # validation K_acc wins over training
    assert view.failure == "NONFINITE_ABORT: too many"
    assert view.summary() == "k_only ep 2 step 8 | loss 2 | K_acc 0.5 | non-finite 1"
