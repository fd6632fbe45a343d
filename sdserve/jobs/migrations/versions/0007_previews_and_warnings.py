"""A running job's latest preview image, for the readers of its event stream; and a job's
warnings (what its sender should know though the request was accepted).

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sdserve_previews",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
    )
    op.add_column(
        "sdserve_jobs",
        sa.Column(
            "warnings",
            sa.JSON().with_variant(JSONB(), "postgresql"),
            nullable=False,
            server_default=sa.text("'[]'"),
        ),
    )


def downgrade() -> None:
    raise NotImplementedError("sdserve's schema only moves forward")
