"""Schema migrations of the job store, run programmatically with Alembic
(ARCHITECTURE.md, "Schema migrations and store outages").

Owns: `VERSION_TABLE`, `upgrade_schema` (bring a database to the newest revision: create it, stamp a database
that predates migrations, apply what is missing), `current_revision`, `head_revision` and `schema_diff` (what
differs between the models and a database). The revisions live in `server/store/migrations/` (package data).

One runner at a time: within a process a lock (Alembic's context is process-global); on PostgreSQL the upgrade
also holds a transaction-scoped advisory lock, so API processes
and `ris-jobs migrate` that start together apply each revision once; on SQLite the database's write lock
serializes them. Every revision runs in the same transaction as its version stamp (PostgreSQL's DDL is
transactional), so a crash leaves the database at the previous revision.

Must not import FastAPI or torch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from server.store.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision that equals the schema `create_all` built before migrations existed.
BASELINE_REVISION = "0001"
#: Where the job store's revision is kept (Alembic's default `alembic_version` belongs to other tools sharing the
#: database, e.g. Optuna's study storage).
VERSION_TABLE = "ris_jobs_alembic_version"
#: Key of PostgreSQL's advisory lock held while migrating (any constant; "ris-jobs" in ASCII, truncated).
_PG_LOCK_KEY = 0x7269732D6A6F6273


#: Alembic's migration context is a process-wide global: one upgrade at a time per process (threads).
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged revisions; `connection` is what env.py migrates."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this package."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database or one that predates migrations."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _predates_migrations(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return "jobs" in tables and VERSION_TABLE not in tables


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the newest).

    An empty database gets every revision; one built by `create_all` before migrations existed (tables, no
    alembic_version) is stamped BASELINE_REVISION first; one already at `revision` is left as it is.
    """
    with _ALEMBIC_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        config = alembic_config(connection)
        if _predates_migrations(connection):
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, revision)


def _ours(name: str | None, type_: str, parent_names: Any) -> bool:
    """Compare only the job store's tables (others in the same database, e.g. Optuna's, are not ours)."""
    return type_ != "table" or name in Base.metadata.tables


def schema_diff(engine: Engine) -> list[Any]:
    """Differences between the models (`Base.metadata`) and the job store's tables; [] when they agree."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE, "include_name": _ours}
        )
        return list(compare_metadata(context, Base.metadata))
