"""Lineage: a sweep's trials point at their sweep; jobs carry tags; jobs and checkpoints record the code version
and the config digest that produced them.

`jobs.parent_id` is the sweep job whose trial this job runs (NULL for a job a user submitted). It is no foreign
key: a trial outlives the deletion of its sweep and keeps its id as its lineage. `jobs.tags` is a JSON list of
short strings (NULL for jobs written before this revision: no tags). `code_version` is the package version,
`+g<commit>` when known; `config_sha256` is api_schemas.lineage.config_sha256 of the config. Rows written before
this revision have NULL (unknown).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # plain ADD COLUMNs, never a batch copy of `jobs`: on SQLite (foreign keys on) dropping the old `jobs` table
    # would cascade to every job's events, metric points and checkpoints
    op.add_column("jobs", sa.Column("parent_id", sa.String(36), nullable=True))
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"])
    op.add_column("jobs", sa.Column("tags", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("code_version", sa.String(100), nullable=True))
    op.add_column("jobs", sa.Column("config_sha256", sa.String(64), nullable=True))
    op.add_column("checkpoints", sa.Column("code_version", sa.String(100), nullable=True))
    op.add_column("checkpoints", sa.Column("config_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    for table, column in (("checkpoints", "config_sha256"), ("checkpoints", "code_version"),
                          ("jobs", "config_sha256"), ("jobs", "code_version"), ("jobs", "tags")):
        op.drop_column(table, column)
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    op.drop_column("jobs", "parent_id")
