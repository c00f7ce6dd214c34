"""The Python client against a live service (real API process, real Redis, real Celery worker)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from api_schemas import JobState, StoredMetricPoint
from client import (
    ChecksumMismatch,
    Client,
    Conflict,
    NotFound,
    StateChange,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from tests.client.conftest import API_KEY, Live, slow_config
from tests.client.proxy import CuttingProxy
from tests.worker.configs import quick_diagnostic_config

pytestmark = pytest.mark.integration


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_submit_wait_and_download_with_sha256(live: Live, tmp_path: Path) -> None:
    seen: list[JobState] = []
    with live.client() as client:
        job = client.submit("diagnostic", quick_diagnostic_config(), name="client-download",
                            idempotency_key=f"dl-{uuid.uuid4().hex}")
        assert job.state == JobState.QUEUED
        final = client.wait(job.id, timeout_s=300, on_progress=lambda j: seen.append(j.state))
        assert final.state == JobState.SUCCEEDED
        assert seen[-1] == JobState.SUCCEEDED and len(seen) >= 2
        listing = {c.name: c for c in client.checkpoints(job.id)}
        assert listing, "a finished job lists its checkpoints"
        name = next(iter(listing))
        path = client.download(job.id, name, tmp_path)
        assert path == tmp_path / f"{job.id}-{name}.pt"
        assert _sha256(path) == listing[name].sha256
        assert path.stat().st_size == listing[name].size
        assert not (tmp_path / f"{path.name}.part").exists()

        # an interrupted download (first half in the .part file) is continued with Range
        whole = path.read_bytes()
        target = tmp_path / "resumed.pt"
        Path(f"{target}.part").write_bytes(whole[: len(whole) // 2])
        progress: list[int] = []
        client.download(job.id, name, target, on_bytes=lambda done, total: progress.append(done))
        assert target.read_bytes() == whole
        assert progress[0] > len(whole) // 2, "the first half was not downloaded again"

        # a .part that does not belong to the file fails the checksum and is removed
        broken = tmp_path / "broken.pt"
        Path(f"{broken}.part").write_bytes(b"\0" * (len(whole) // 2))
        with pytest.raises(ChecksumMismatch):
            client.download(job.id, name, broken)
        assert not broken.exists() and not Path(f"{broken}.part").exists()

        assert client.download(job.id, "final", tmp_path / "final.pt").read_bytes()  # the alias


def test_report_logs_and_events(live: Live, finished_job: str) -> None:
    with live.client() as client:
        report = client.report(finished_job)
        assert report["kind"] == "diagnostic" and report["verdict"]["status"] in ("PASS", "WARN", "FAIL")
        assert "Verdict" in client.report_markdown(finished_job)
        text = "".join(client.logs(finished_job, follow=True))
        assert text.strip(), "the job wrote a log"
        assert "".join(client.logs(finished_job, offset=len(text.encode()))) == ""
        states = [e.to_state for e in client.events(finished_job)]
        assert states[0] == JobState.QUEUED and states[-1] == JobState.SUCCEEDED
        plots = {a["name"]: a for a in report["artifacts"]}
        assert set(plots) == {"loss_curves.png", "k_acc_per_epoch.png"}
        for name, listed in plots.items():
            data = client.artifact(finished_job, name)
            assert data.startswith(b"\x89PNG") and hashlib.sha256(data).hexdigest() == listed["sha256"]


def test_typed_errors_carry_the_problem(live: Live) -> None:
    with live.client() as client:
        missing = str(uuid.uuid4())
        with pytest.raises(NotFound) as not_found:
            client.get(missing)
        assert not_found.value.status == 404 and not_found.value.problem.status == 404
        assert missing in (not_found.value.problem.detail or "")

        config = quick_diagnostic_config()
        config["data"]["batch_size"] = -1
        with pytest.raises(ValidationFailed) as invalid:
            client.submit("diagnostic", config)
        assert invalid.value.status == 422
        assert "config.data.batch_size" in {e.field for e in invalid.value.field_errors}

        with pytest.raises(ValidationFailed):
            client.submit("diagnostic", config, preset="quickstart")  # both: refused
    with Client(live.url) as anonymous, pytest.raises(Unauthorized) as unauthorized:
        anonymous.list_jobs()
    assert unauthorized.value.problem.detail == "missing X-API-Key header"


def test_list_paging_cancel_and_conflict(live: Live) -> None:
    with live.client() as client:
        name = f"paging-{uuid.uuid4().hex[:6]}"
        ids = [client.submit("diagnostic", slow_config(), name=name).id for _ in range(3)]
        with pytest.raises(Conflict):
            client.delete(ids[0])  # not terminal yet
        with pytest.raises(WaitTimeout):
            client.wait(ids[0], timeout_s=1.0)
        with pytest.raises(WaitTimeout):
            client.wait(ids[-1], timeout_s=1.0, stream=False)
        paged = [j.id for j in client.iter_jobs(kind="diagnostic", page_size=1) if j.name == name]
        assert paged == ids[::-1], "newest first, each job once"
        first = client.list_jobs(kind="diagnostic", limit=1)
        assert len(first.items) == 1 and first.next_page_token
        second = client.list_jobs(kind="diagnostic", limit=1, page_token=first.next_page_token)
        assert second.items[0].id != first.items[0].id

        for job_id in ids:
            client.cancel(job_id)
        finals = [client.wait(job_id, timeout_s=120) for job_id in ids]
        assert [j.state for j in finals] == [JobState.CANCELLED] * 3
        cancelled = {j.id for j in client.iter_jobs(state="CANCELLED")}
        assert set(ids) <= cancelled
        for job_id in ids:
            client.delete(job_id)
        with pytest.raises(NotFound):
            client.get(ids[0])


def _seqs(items: list[StoredMetricPoint]) -> list[int]:
    return [p.seq for p in items]


def test_stream_resumes_after_a_closed_stream_without_loss_or_duplicates(live: Live, finished_job: str) -> None:
    with live.client() as client:
        stored = _seqs(list(client.iter_metrics(finished_job)))
        assert stored == list(range(1, len(stored) + 1)) and len(stored) > 20
        first: list[StoredMetricPoint] = []
        for item in client.stream_metrics(finished_job):
            if isinstance(item, StoredMetricPoint):
                first.append(item)
            if len(first) == 10:
                break  # the consumer closes the stream mid-way
        rest = [i for i in client.stream_metrics(finished_job, last_event_id=first[-1].seq)
                if isinstance(i, StoredMetricPoint)]
        union = _seqs(first) + _seqs(rest)
        assert union == stored


def test_stream_survives_dropped_connections(live: Live, finished_job: str) -> None:
    """The network drops the stream twice mid-response; the client reconnects with Last-Event-ID and yields
    every point once, in order, and the final state."""
    port = int(live.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after_bytes=6000, cuts=2)
    try:
        with Client(proxy.url, API_KEY, reconnect_delay_s=0.05) as client:
            items = list(client.stream_metrics(finished_job))
            stored = _seqs(list(client.iter_metrics(finished_job)))
    finally:
        proxy.close()
    assert proxy.cut_done == 2
    points = [i for i in items if isinstance(i, StoredMetricPoint)]
    assert _seqs(points) == stored
    states = [i.state for i in items if isinstance(i, StateChange)]
    assert states[-1] == JobState.SUCCEEDED


def test_stream_and_wait_follow_a_running_job(live: Live) -> None:
    with live.client() as client:
        job = client.submit("diagnostic", slow_config(sleep_per_step_s=0.05, n_train=256), name="client-stream")
        items = list(client.stream_metrics(job.id))
        points = [i for i in items if isinstance(i, StoredMetricPoint)]
        assert _seqs(points) == list(range(1, len(points) + 1))
        states = [i.state for i in items if isinstance(i, StateChange)]
        assert states[-1] == JobState.SUCCEEDED and JobState.RUNNING in states
        assert client.wait(job.id, stream=False).state == JobState.SUCCEEDED
