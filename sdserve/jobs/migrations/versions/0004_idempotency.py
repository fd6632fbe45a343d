"""Idempotency keys get a table; job numbers (ModelsLab's ids) become random, so the counter
that handed them out in sequence goes. Jobs are indexed by owner, for per-key quotas and
/health's counts of the caller's jobs.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sdserve_idempotency",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )
    op.create_index("sdserve_idempotency_expiry", "sdserve_idempotency", ["expires_at"])
    op.create_index("sdserve_jobs_owner", "sdserve_jobs", ["owner", "status"])
    op.drop_table("sdserve_counters")


def downgrade() -> None:
    raise NotImplementedError("sdserve's schema only moves forward")
