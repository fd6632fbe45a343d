"""sdserve's tables, one definition for SQLite and PostgreSQL (SQLAlchemy Core).

The migrations in `jobs/migrations/` bring any database made by an earlier release to exactly
this; a test compares the two after upgrading on each backend.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

Json = sa.JSON().with_variant(JSONB(), "postgresql")
"""JSON text in SQLite, JSONB in PostgreSQL; values are decoded Python either way."""
Seconds: sa.Double[float] = sa.Double()
"""Unix time or a duration, in seconds."""

jobs = sa.Table(
    "sdserve_jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("number", sa.BigInteger, nullable=False, unique=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("dialect", sa.Text, nullable=False),
    sa.Column("extra", Json, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("request", Json, nullable=False),
    sa.Column("input", Json, nullable=False),
    sa.Column("policy", Json, nullable=False),
    sa.Column("webhook", sa.Text),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("started_at", Seconds),
    sa.Column("finished_at", Seconds),
    sa.Column("expires_at", Seconds),
    sa.Column("ttl_s", Seconds, nullable=False),
    sa.Column("timeout_s", Seconds),
    sa.Column("low_priority", sa.Boolean, nullable=False, server_default=sa.false()),
    # What queued jobs share to run in one pipeline call (GenerationRequest.batch_key); NULL:
    # the job runs alone.
    sa.Column("batch_key", sa.Text),
    sa.Column("outputs", Json, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("error", sa.Text),
    # What the person who sent the request should know though it was accepted.
    sa.Column("warnings", Json, nullable=False, server_default=sa.text("'[]'")),
    # Runs started (each run's fencing token: a stale run's writes name an older one).
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    # Runs that ended in their worker's death: what max_attempts bounds (jobs/losses.py).
    sa.Column("deaths", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("retried", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("worker_id", sa.Text),
    # The last sign of life of the worker running the job (SQLite's stalled-run detection).
    sa.Column("heartbeat_at", Seconds),
    # The procrastinate job delivering the current run (PostgreSQL).
    sa.Column("delivery_id", sa.BigInteger),
    sa.Column("progress_step", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("progress_total", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Index("sdserve_jobs_queue", "status", "low_priority", "created_at"),
    sa.Index("sdserve_jobs_endpoint", "endpoint", "status"),
    sa.Index("sdserve_jobs_batch", "endpoint", "batch_key", "status"),
    sa.Index("sdserve_jobs_expiry", "expires_at"),
    sa.Index("sdserve_jobs_owner", "owner", "status"),
)

job_events = sa.Table(
    "sdserve_job_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("read", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("sdserve_job_events_job", "job_id", "read"),
    sqlite_autoincrement=True,
)

previews = sa.Table(
    "sdserve_previews",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=False),
)
"""Each running job's latest preview (a small JPEG of its first image forming), for the
readers of its event stream; kept until the job is deleted."""

webhooks = sa.Table(
    "sdserve_webhooks",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("next_at", Seconds, nullable=False),
    # The event's id, the same in every try's signature (`webhook-id`), and its time.
    sa.Column("event_id", sa.Text),
    sa.Column("created_at", Seconds),
    # Set when the retries ran out: the delivery is kept, failed, until its job expires.
    sa.Column("failed_at", Seconds),
    sa.Column("last_error", sa.Text),
    sa.Index("sdserve_webhooks_due", "next_at"),
    sqlite_autoincrement=True,
)

idempotency = sa.Table(
    "sdserve_idempotency",
    metadata,
    sa.Column("owner", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False),
    sa.Index("sdserve_idempotency_expiry", "expires_at"),
)
"""Idempotency-Key headers: which job a key's submission made, for the same request again.
Kept past the job's own retention, so a repeat after the job expired is told so."""

workers = sa.Table(
    "sdserve_workers",
    metadata,
    sa.Column("worker_id", sa.Text, primary_key=True),
    sa.Column("heartbeat_at", Seconds, nullable=False),
    sa.Column("job_id", sa.Text),
    # The procrastinate worker standing for this sdserve worker (PostgreSQL).
    sa.Column("delivery_worker_id", sa.BigInteger),
)
