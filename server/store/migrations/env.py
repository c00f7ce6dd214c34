"""Alembic environment: runs the revisions on the connection that `server.store.migrate` hands over.

Only the online mode exists: the service always migrates a live database (there is no SQL-script output).
SQLite gets batch mode, so that a later revision may alter a column (SQLite rebuilds the table for that). The
version table is VERSION_TABLE, not Alembic's default: other tools that keep their tables in the same database
(Optuna's study storage) use `alembic_version` for their own revisions.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from server.store.migrate import VERSION_TABLE
from server.store.models import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError("run the job store's migrations through server.store.migrate (it passes the connection)")
run_migrations(_connection)
