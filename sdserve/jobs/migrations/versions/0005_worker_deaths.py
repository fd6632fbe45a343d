"""Jobs count the deaths of their worker apart from their runs: a restart of the server starts
a new run without using up an attempt, so attempts stop being the number of runs.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sdserve_jobs",
        sa.Column("deaths", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    raise NotImplementedError("sdserve's schema only moves forward")
