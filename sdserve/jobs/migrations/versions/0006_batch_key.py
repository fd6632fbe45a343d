"""Queued jobs that can share one pipeline call carry the same `batch_key`, so a worker can
claim them together (dynamic batching). Jobs queued before this have none and run alone.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sdserve_jobs", sa.Column("batch_key", sa.Text))
    op.create_index("sdserve_jobs_batch", "sdserve_jobs", ["endpoint", "batch_key", "status"])


def downgrade() -> None:
    raise NotImplementedError("sdserve's schema only moves forward")
