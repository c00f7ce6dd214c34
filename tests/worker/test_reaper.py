"""The reaper's cancel escalation with a stand-in Celery control: the last-resort terminate hits only the task
of the cancelled job, and only if a worker still runs it a grace period after the escalation."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api_schemas import JobState
from server.dispatch import RUN_JOB_TASK
from server.settings import Settings
from server.store import get_job
from server.store.principals import ADMIN
from tests.factories import make_job
from worker.reaper import Reaper, ReapReport

GRACE_S = 0.2


class FakeControl:
    """`inspect().active()` answers with `active`; `revoke` calls are recorded."""

    def __init__(self, active: dict[str, list[dict[str, Any]]]) -> None:
        self.active_tasks = active
        self.revoked: list[tuple[str, bool]] = []

    def inspect(self, timeout: float = 1.0) -> FakeControl:
        return self

    def active(self) -> dict[str, list[dict[str, Any]]]:
        return self.active_tasks

    def revoke(self, task_id: str, *, terminate: bool = False, signal: str = "SIGTERM") -> None:
        self.revoked.append((task_id, terminate))


class FakeProducer:
    def __init__(self, control: FakeControl) -> None:
        self.control = control


class EmptyBroker:
    """A Redis with an empty queue, no unacked messages and no live worker announcements."""

    def scan_iter(self, match: str, count: int) -> list[bytes]:
        return []

    def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        return []

    def zrangebyscore(self, key: str, low: float, high: str) -> list[bytes]:
        return []


def _reaper(sessions: sessionmaker[Session], control: FakeControl) -> Reaper:
    settings = Settings(cancel_grace_s=GRACE_S, lease_timeout_s=60.0)
    return Reaper(settings, sessions=sessions, producer=FakeProducer(control), redis=EmptyBroker(),  # type: ignore[arg-type]
                  redispatch_after_s=3600.0)


def _sweep_until(reaper: Reaper, done: Any, deadline_s: float = 10.0) -> ReapReport:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        report = reaper.reap_once()
        if done(report):
            return report
        time.sleep(0.05)
    raise AssertionError("the reaper never did it")


def _task(task_id: str, job_id: str) -> dict[str, Any]:
    return {"id": task_id, "name": RUN_JOB_TASK, "args": [job_id], "worker_pid": 1234}


def test_wedged_cancel_is_cancelled_then_only_its_task_terminated(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        wedged = make_job(s, JobState.CANCELLING)
        other = make_job(s, JobState.RUNNING)
    control = FakeControl({"gpu0@host": [_task("t-wedged", wedged.id)], "gpu1@host": [_task("t-other", other.id)]})
    reaper = _reaper(sessions, control)

    report = _sweep_until(reaper, lambda r: wedged.id in r.cancelled)
    assert control.revoked == [], "no terminate at escalation time: the fenced writes stop the trainer first"
    with sessions() as s:
        assert get_job(s, wedged.id, principal=ADMIN).state == JobState.CANCELLED
        assert get_job(s, other.id, principal=ADMIN).state == JobState.RUNNING

    report = _sweep_until(reaper, lambda r: r.terminated)
    assert report.terminated == [wedged.id]
    assert control.revoked == [("t-wedged", True)]


def test_escalated_cancel_whose_task_ended_is_not_terminated(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        job = make_job(s, JobState.CANCELLING)
    control = FakeControl({"gpu0@host": []})
    reaper = _reaper(sessions, control)
    _sweep_until(reaper, lambda r: job.id in r.cancelled)
    time.sleep(GRACE_S + 0.05)  # past the second grace period
    assert reaper.reap_once().terminated == []
    assert control.revoked == []
