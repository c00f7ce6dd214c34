"""Engines, schema and sessions of the job store (ARCHITECTURE.md, "Where data lives").

Owns: `make_engine` (SQLite in WAL mode by default, PostgreSQL through psycopg 3), `create_schema` (Alembic's
upgrade to the newest revision, see `server.store.migrate`),
`make_session_factory`, `utcnow`, `is_transient`. Must not import FastAPI or torch.

Transactions: every store function that writes opens its own transaction (ending any read the session had
open) and commits before it returns. Under SQLite WAL a read transaction cannot be upgraded to a write once
another connection committed, so write functions start with their write statement.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from server.store.migrate import upgrade_schema

#: How long SQLite waits for the write lock before it raises "database is locked", milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def utcnow() -> datetime:
    """Now, timezone-aware UTC (the store keeps every time in UTC)."""
    return datetime.now(UTC)


def _set_sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`: `sqlite:///path` (WAL, busy_timeout, foreign keys) or `postgresql+psycopg://…`.

    A plain `postgresql://` URL is mapped to the psycopg 3 driver. For a SQLite file, the parent directory
    is created.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}; use sqlite or postgresql+psycopg")


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema revision with Alembic (`server.store.migrate.upgrade_schema`):
    an empty database is created, one that predates migrations is stamped and upgraded, one at the newest
    revision is left as it is."""
    upgrade_schema(engine)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose rows stay readable after commit (`expire_on_commit=False`)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def ping_database(session_factory: sessionmaker[Session]) -> None:
    """Run `SELECT 1`; raises sqlalchemy.exc.SQLAlchemyError when the database is unreachable."""
    with session_factory() as session:
        session.execute(text("SELECT 1"))


def is_transient(exc: BaseException) -> bool:
    """True when the database was unreachable or dropped the connection (a restart, a failover, a network blip;
    SQLite's "database is locked" too): the same statement may succeed later. The API answers 503 with
    Retry-After; the worker retries (`worker.store_retry`)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
