"""One schema for both backends: the same table, column and index names in SQLite and
PostgreSQL, and job numbers from one counter table in both.

SQLite's tables gain the `sdserve_` prefix and the columns only PostgreSQL had; PostgreSQL gains
the heartbeat column and the counter (carried on from its sequence) and loses its foreign keys:
the job-state core deletes a job's events and webhooks itself, on both backends alike.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _sqlite() -> None:
    for old in ("jobs", "job_events", "webhooks", "counters", "workers"):
        op.rename_table(old, f"sdserve_{old}")
    op.add_column("sdserve_jobs", sa.Column("delivery_id", sa.BigInteger))
    op.add_column("sdserve_workers", sa.Column("delivery_worker_id", sa.BigInteger))
    for old in ("jobs_queue", "jobs_expiry", "job_events_job"):
        op.drop_index(old)
    op.create_index("sdserve_jobs_queue", "sdserve_jobs", ["status", "low_priority", "created_at"])
    op.create_index("sdserve_jobs_expiry", "sdserve_jobs", ["expires_at"])
    op.create_index("sdserve_job_events_job", "sdserve_job_events", ["job_id", "read"])


def _postgresql() -> None:
    op.add_column("sdserve_jobs", sa.Column("heartbeat_at", sa.Double))
    op.create_table(
        "sdserve_counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO sdserve_counters (name, value) SELECT 'job', last_value"
        " FROM sdserve_job_number WHERE is_called"
    )
    op.execute("DROP SEQUENCE sdserve_job_number")
    op.drop_constraint("sdserve_job_events_job_id_fkey", "sdserve_job_events", type_="foreignkey")
    op.drop_constraint("sdserve_webhooks_job_id_fkey", "sdserve_webhooks", type_="foreignkey")
    op.drop_index("sdserve_jobs_running", table_name="sdserve_jobs")
    op.drop_index("sdserve_jobs_expiry", table_name="sdserve_jobs")
    op.create_index("sdserve_jobs_expiry", "sdserve_jobs", ["expires_at"])
    op.create_index("sdserve_jobs_queue", "sdserve_jobs", ["status", "low_priority", "created_at"])
    op.execute("DROP TABLE IF EXISTS sdserve_meta")  # the hand-rolled runner's version record


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgresql()
    else:
        _sqlite()
    op.create_index("sdserve_webhooks_due", "sdserve_webhooks", ["next_at"], if_not_exists=True)
    op.create_index(
        "sdserve_jobs_endpoint", "sdserve_jobs", ["endpoint", "status"], if_not_exists=True
    )


def downgrade() -> None:
    raise NotImplementedError("sdserve's schema only moves forward")
