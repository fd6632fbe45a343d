"""Webhook deliveries become durable events: a stable id for the Standard Webhooks signature
(the same across retries), the event's time (retries run over a horizon from it), and a record
of deliveries that exhausted their retries instead of deleting them.

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sdserve_webhooks", sa.Column("event_id", sa.Text))
    op.add_column("sdserve_webhooks", sa.Column("created_at", sa.Double))
    op.add_column("sdserve_webhooks", sa.Column("failed_at", sa.Double))
    op.add_column("sdserve_webhooks", sa.Column("last_error", sa.Text))
    # Deliveries pending from before: ids of their own, their horizon counted from now on.
    op.execute(
        "UPDATE sdserve_webhooks SET event_id = 'msg_sdserve_' || CAST(id AS TEXT),"
        " created_at = next_at"
    )


def downgrade() -> None:
    raise NotImplementedError("sdserve's schema only moves forward")
