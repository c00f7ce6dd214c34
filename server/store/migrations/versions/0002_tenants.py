"""Tenants: each job event records the principal that caused it; each key's job listing has its own index.

`job_events.principal` is a non-secret principal id (`key-<16 hex>`, `anonymous`, `system:worker`,
`system:reaper`); events written before this revision have NULL (unknown). `ix_jobs_principal_created` serves
the listing of one principal's jobs, newest first.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("principal", sa.String(64), nullable=True))
    op.create_index("ix_jobs_principal_created", "jobs", ["principal", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_principal_created", table_name="jobs")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("principal")
