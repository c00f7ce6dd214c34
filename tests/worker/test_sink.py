"""StoreSink against a real SQLite store: when it flushes, what it publishes, and which failures fail a job."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api_schemas import CheckpointInfo, JobState, MetricPoint
from server.store import ArtifactStore, get_job, list_checkpoints, read_points
from server.store.errors import ArtifactUploadFailed, LeaseLost
from server.store.jobs import transition
from server.store.objects import LocalObjectStore
from server.store.principals import ADMIN
from tests.factories import make_job
from tests.worker.conftest import RecordingRedis
from worker.sink import StoreSink


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _point(step: int, key: str = "train/loss", value: float = 1.0) -> MetricPoint:
    return MetricPoint(phase="k_only", epoch=0, step=step, key=key, value=value)


def _nonfinite_points(step: int) -> list[MetricPoint]:
    return [_point(step, "nonfinite/cause/loss"), _point(step, "nonfinite/term/k")]


@pytest.fixture
def running_job(sessions: sessionmaker[Session]) -> tuple[str, str]:
    with sessions() as s:
        job = make_job(s, JobState.RUNNING)
        return job.id, job.lease_token or ""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _sink(
    sessions: sessionmaker[Session], artifacts: ArtifactStore, redis: RecordingRedis, job: tuple[str, str],
    clock: FakeClock, *, max_points: int = 100,
) -> StoreSink:
    job_id, lease = job
    return StoreSink(
        sessions, job_id, lease_token=lease, artifacts=artifacts, redis=redis,  # type: ignore[arg-type]
        flush_interval_s=1.0, flush_max_points=max_points, clock=clock,
    )


def _stored_keys(sessions: sessionmaker[Session], job_id: str) -> list[str]:
    with sessions() as s:
        return [p.key for p in read_points(s, job_id, principal=ADMIN).points]


def test_log_metrics_buffers_until_the_flush_interval(sessions, artifacts, redis_stub, running_job, clock) -> None:
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_metrics([_point(1)])
    assert _stored_keys(sessions, running_job[0]) == []
    clock.now += 1.5
    sink.log_metrics([_point(2)])
    assert _stored_keys(sessions, running_job[0]) == ["train/loss", "train/loss"]


def test_log_metrics_flushes_at_max_points(sessions, artifacts, redis_stub, running_job, clock) -> None:
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock, max_points=3)
    sink.log_metrics([_point(1), _point(2)])
    assert _stored_keys(sessions, running_job[0]) == []
    sink.log_metrics([_point(3)])
    assert len(_stored_keys(sessions, running_job[0])) == 3


def test_nonfinite_points_flush_immediately_into_the_job_summary(
    sessions, artifacts, redis_stub, running_job, clock
) -> None:
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_metrics(_nonfinite_points(5))
    with sessions() as s:
        job = get_job(s, running_job[0], principal=ADMIN)
    assert job.nonfinite_total == 1
    assert job.nonfinite["by_cause"] == {"loss": 1}
    assert job.nonfinite["by_loss_term"] == {"k": 1}


def test_flush_publishes_stored_points_with_seq(sessions, artifacts, redis_stub, running_job, clock) -> None:
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_metrics([_point(1), _point(2)])
    sink.close()
    [(channel, message)] = redis_stub.published
    assert channel == f"job:{running_job[0]}:live"
    assert message["type"] == "metrics"
    assert [p["seq"] for p in message["points"]] == [1, 2]


def test_close_flushes_the_rest_and_is_idempotent(sessions, artifacts, redis_stub, running_job, clock) -> None:
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_metrics([_point(1)])
    sink.close()
    sink.close()
    assert _stored_keys(sessions, running_job[0]) == ["train/loss"]


def _scratch_checkpoint(tmp_path: Path, name: str, data: bytes) -> CheckpointInfo:
    path = tmp_path / "scratch" / f"{name}.{hashlib.sha256(data).hexdigest()[:6]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return CheckpointInfo(name=name, phase="k_only", epoch=0, step=1, path=str(path), size=len(data),
                          sha256=hashlib.sha256(data).hexdigest())


def test_log_checkpoint_flushes_points_uploads_then_registers(
    sessions, artifacts: ArtifactStore, redis_stub, running_job, clock, tmp_path: Path
) -> None:
    job_id, _ = running_job
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_metrics([_point(1)])
    sink.log_checkpoint(_scratch_checkpoint(tmp_path, "k_only-1", b"weights"))
    assert _stored_keys(sessions, job_id) == ["train/loss"]
    with sessions() as s:
        [row] = list_checkpoints(s, job_id, principal=ADMIN)
    assert row.name == "k_only-1" and not row.path.startswith("/"), "the record names the store's key"
    key = artifacts.job_key(job_id, row.path)
    assert artifacts.objects.read_range(key, 0, 100) == b"weights"


def test_a_rewritten_checkpoint_replaces_its_object_after_the_record(
    sessions, artifacts: ArtifactStore, redis_stub, running_job, clock, tmp_path: Path
) -> None:
    job_id, _ = running_job
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_checkpoint(_scratch_checkpoint(tmp_path, "k_only-last", b"first"))
    sink.log_checkpoint(_scratch_checkpoint(tmp_path, "k_only-last", b"second"))
    with sessions() as s:
        [row] = list_checkpoints(s, job_id, principal=ADMIN)
    objects = artifacts.objects.list(artifacts.job_prefix(job_id))
    assert [o.key for o in objects] == [artifacts.job_key(job_id, row.path)], "the replaced object is gone"
    assert row.sha256 == hashlib.sha256(b"second").hexdigest()


def test_a_checkpoint_the_store_does_not_take_is_never_recorded(
    sessions, redis_stub, running_job, clock, tmp_path: Path
) -> None:
    job_id, _ = running_job
    broken = ArtifactStore(LocalObjectStore(tmp_path / "store"))
    (tmp_path / "store").write_text("a file where the store's directory should be")
    sink = _sink(sessions, broken, redis_stub, running_job, clock)
    with pytest.raises(ArtifactUploadFailed, match="could not be uploaded to the artifact store"):
        sink.log_checkpoint(_scratch_checkpoint(tmp_path, "k_only-1", b"weights"))
    with sessions() as s:
        assert list_checkpoints(s, job_id, principal=ADMIN) == []


def test_redis_publish_failure_does_not_fail_the_job(sessions, artifacts, running_job, clock) -> None:
    sink = _sink(sessions, artifacts, RecordingRedis(down=True), running_job, clock)
    sink.log_metrics(_nonfinite_points(1))
    sink.close()
    assert len(_stored_keys(sessions, running_job[0])) == 2


def test_flush_after_lease_lost_raises(sessions, artifacts, redis_stub, running_job, clock) -> None:
    job_id, lease = running_job
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    with sessions() as s:
        transition(s, job_id, JobState.SUCCEEDED, lease_token=lease, principal=ADMIN)
    with pytest.raises(LeaseLost):
        sink.log_metrics(_nonfinite_points(1))


def test_background_flush_error_is_raised_on_the_next_trainer_call(
    sessions, artifacts, redis_stub, running_job, clock
) -> None:
    job_id, lease = running_job
    sink = _sink(sessions, artifacts, redis_stub, running_job, clock)
    sink.log_metrics([_point(1)])
    with sessions() as s:
        transition(s, job_id, JobState.SUCCEEDED, lease_token=lease, principal=ADMIN)
    clock.now += 2.0
    sink.flush_if_due()  # the heartbeat thread's call: must not raise there
    with pytest.raises(LeaseLost):
        sink.log_metrics([_point(2)])
