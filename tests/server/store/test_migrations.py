"""Schema migrations (Alembic): the models and the revisions agree, and a database at revision 0001 (or one
built before migrations existed) is upgraded with every job, metric point, event and checkpoint record intact.
Each test runs on SQLite and on PostgreSQL (a schema of its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, text

from server.store import get_job, list_checkpoints, list_events, make_engine, make_session_factory, read_points
from server.store.db import create_schema
from server.store.migrate import (
    BASELINE_REVISION,
    VERSION_TABLE,
    current_revision,
    head_revision,
    schema_diff,
    upgrade_schema,
)
from server.store.principals import ADMIN
from tests.services import PG_URL, reachable_pg_url, service_missing


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: a fresh SQLite file, or a fresh PostgreSQL schema (dropped after)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'migrate.sqlite'}")
        yield engine
        engine.dispose()
        return
    url, reason = reachable_pg_url()
    if url is None:
        service_missing("PostgreSQL", PG_URL, reason)
    schema = f"ris_migrate_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{url}?options=-csearch_path%3D{schema}")
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_models_and_migrations_agree(empty_engine: Engine) -> None:
    upgrade_schema(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []


def test_upgrade_at_head_changes_nothing(empty_engine: Engine) -> None:
    create_schema(empty_engine)
    create_schema(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []


T0 = datetime(2026, 1, 2, 3, 4, 5)  # naive UTC, as revision 0001 stores times


def _fill_revision_1(engine: Engine) -> dict[str, Any]:
    """Rows as the service wrote them at revision 0001 (plain SQL: today's models have newer columns)."""
    job_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
    meta = sa.MetaData()
    jobs = sa.Table("jobs", meta, autoload_with=engine)
    events = sa.Table("job_events", meta, autoload_with=engine)
    metrics = sa.Table("metric_points", meta, autoload_with=engine)
    checkpoints = sa.Table("checkpoints", meta, autoload_with=engine)
    assert "principal" not in events.c  # really revision 0001
    job = dict(
        kind="training", name="before", state="SUCCEEDED", previous_state="RUNNING", config={"seed": 7},
        principal="key-0123456789abcdef", attempt=1, max_attempts=2, created_at=T0, queued_at=T0, started_at=T0,
        finished_at=T0, heartbeat_at=T0, phase="k_only", epoch=2, step=40, progress_fraction=1.0,
        latest_metrics={"train/loss": 0.5}, nonfinite={"total": 0}, nonfinite_total=0, next_seq=6,
        report={"verdict": "ok"},
    )
    with engine.begin() as conn:
        conn.execute(jobs.insert(), [{"id": job_id, **job}, {**job, "id": other_id, "principal": None,
                                                              "state": "QUEUED", "report": None}])
        conn.execute(events.insert(), [
            {"job_id": job_id, "from_state": None, "to_state": "QUEUED", "at": T0, "attempt": 1, "message": None},
            {"job_id": job_id, "from_state": "RUNNING", "to_state": "SUCCEEDED", "at": T0, "attempt": 1,
             "message": "done"},
        ])
        conn.execute(metrics.insert(), [
            {"job_id": job_id, "seq": seq, "phase": "k_only", "epoch": 0, "step": seq, "key": "train/loss",
             "value": 1.0 / seq, "ts": T0}
            for seq in range(1, 6)
        ])
        conn.execute(checkpoints.insert(), [
            {"job_id": job_id, "name": "final", "phase": "k_only", "epoch": 2, "step": 40,
             "path": "checkpoints/final.pt", "size": 123, "sha256": "ab" * 32, "is_final": True, "created_at": T0},
        ])
    return {"job_id": job_id, "other_id": other_id}


def _assert_intact(engine: Engine, ids: dict[str, Any]) -> None:
    sessions = make_session_factory(engine)
    with sessions() as s:
        job = get_job(s, ids["job_id"], principal=ADMIN)
        assert (job.name, job.state, job.principal, job.config, job.report) == (
            "before", "SUCCEEDED", "key-0123456789abcdef", {"seed": 7}, {"verdict": "ok"})
        assert job.created_at == T0.replace(tzinfo=UTC)
        assert get_job(s, ids["other_id"], principal=ADMIN).principal is None
        page = read_points(s, ids["job_id"], principal=ADMIN)
        assert [(p.seq, p.value) for p in page.points] == [(seq, 1.0 / seq) for seq in range(1, 6)]
        events = list_events(s, ids["job_id"], principal=ADMIN)
        assert [(e.to_state, e.message, e.principal) for e in events] == [("QUEUED", None, None),
                                                                         ("SUCCEEDED", "done", None)]
        [ckpt] = list_checkpoints(s, ids["job_id"], principal=ADMIN)
        assert (ckpt.name, ckpt.step, ckpt.size, ckpt.sha256, ckpt.is_final) == ("final", 40, 123, "ab" * 32, True)


def test_revision_1_database_upgrades_with_its_data_intact(empty_engine: Engine) -> None:
    upgrade_schema(empty_engine, BASELINE_REVISION)
    assert current_revision(empty_engine) == BASELINE_REVISION
    ids = _fill_revision_1(empty_engine)
    create_schema(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []
    _assert_intact(empty_engine, ids)


def test_database_from_before_migrations_is_stamped_then_upgraded(empty_engine: Engine) -> None:
    """A database that `create_all` built before migrations existed has the tables but no version table."""
    upgrade_schema(empty_engine, BASELINE_REVISION)
    with empty_engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    assert current_revision(empty_engine) is None
    ids = _fill_revision_1(empty_engine)
    create_schema(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []
    _assert_intact(empty_engine, ids)


def test_head_downgrades_to_revision_1_and_back(empty_engine: Engine) -> None:
    from alembic import command

    from server.store.migrate import alembic_config

    upgrade_schema(empty_engine)
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), BASELINE_REVISION)
    assert current_revision(empty_engine) == BASELINE_REVISION
    upgrade_schema(empty_engine)
    assert schema_diff(empty_engine) == []


def test_ris_jobs_migrate_upgrades_a_database_from_before_migrations(tmp_path: Path) -> None:
    """`ris-jobs migrate` (a real process, configured by the environment like every service command)."""
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    upgrade_schema(engine, BASELINE_REVISION)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    ids = _fill_revision_1(engine)
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "DATABASE_URL": url, "ARTIFACT_DIR": str(tmp_path / "artifacts"), "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "migrate"], env=env, cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"revision {head_revision()}" in done.stdout
    assert current_revision(engine) == head_revision()
    _assert_intact(engine, ids)
    engine.dispose()


def test_compose_migrates_once_before_the_api_starts() -> None:
    import yaml

    services = yaml.safe_load((Path(__file__).resolve().parents[3] / "docker-compose.yml").read_text())["services"]
    assert services["migrate"]["command"] == ["ris-jobs", "migrate"]
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_concurrent_upgrades_apply_each_revision_once(empty_engine: Engine) -> None:
    """Several processes starting together (API replicas, `ris-jobs migrate`) all succeed on one schema."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: upgrade_schema(empty_engine), range(4)))
    assert current_revision(empty_engine) == head_revision()
    assert schema_diff(empty_engine) == []
