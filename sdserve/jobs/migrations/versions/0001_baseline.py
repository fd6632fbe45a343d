"""The schema of sdserve 0.1 (issue 8): SQLite's and PostgreSQL's tables as they were.

A data folder or database made by that release has exactly this and no Alembic version; the
upgrade marks it as at this revision and carries on from here.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQLITE = [
    """CREATE TABLE jobs (
        id TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE, owner TEXT NOT NULL,
        endpoint TEXT NOT NULL, dialect TEXT NOT NULL, extra TEXT NOT NULL, status TEXT NOT NULL,
        request TEXT NOT NULL, input TEXT NOT NULL, policy TEXT NOT NULL, webhook TEXT,
        created_at REAL NOT NULL, started_at REAL, finished_at REAL, expires_at REAL,
        ttl_s REAL NOT NULL, timeout_s REAL, low_priority INTEGER NOT NULL DEFAULT 0,
        outputs TEXT NOT NULL DEFAULT '[]', error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        retried INTEGER NOT NULL DEFAULT 0, worker_id TEXT, heartbeat_at REAL,
        progress_step INTEGER NOT NULL DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX jobs_queue ON jobs (status, low_priority, created_at)",
    "CREATE INDEX jobs_expiry ON jobs (expires_at)",
    """CREATE TABLE job_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
        step INTEGER NOT NULL, total INTEGER NOT NULL, read INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX job_events_job ON job_events (job_id, read)",
    """CREATE TABLE webhooks (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
        url TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL)""",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE workers (worker_id TEXT PRIMARY KEY, heartbeat_at REAL NOT NULL, job_id TEXT)",
]

_POSTGRESQL = [
    "CREATE SEQUENCE sdserve_job_number",
    """CREATE TABLE sdserve_jobs (
        id TEXT PRIMARY KEY, number BIGINT NOT NULL UNIQUE, owner TEXT NOT NULL,
        endpoint TEXT NOT NULL, dialect TEXT NOT NULL, extra JSONB NOT NULL,
        status TEXT NOT NULL, request JSONB NOT NULL, input JSONB NOT NULL,
        policy JSONB NOT NULL, webhook TEXT, created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, expires_at DOUBLE PRECISION,
        ttl_s DOUBLE PRECISION NOT NULL, timeout_s DOUBLE PRECISION,
        low_priority BOOLEAN NOT NULL DEFAULT FALSE, outputs JSONB NOT NULL DEFAULT '[]',
        error TEXT, attempts INTEGER NOT NULL DEFAULT 0, retried INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT, delivery_id BIGINT, progress_step INTEGER NOT NULL DEFAULT 0,
        progress_total INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX sdserve_jobs_endpoint ON sdserve_jobs (endpoint, status)",
    """CREATE INDEX sdserve_jobs_expiry ON sdserve_jobs (expires_at)
        WHERE expires_at IS NOT NULL""",
    """CREATE INDEX sdserve_jobs_running ON sdserve_jobs (status)
        WHERE status = 'IN_PROGRESS'""",
    """CREATE TABLE sdserve_job_events (seq BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES sdserve_jobs (id) ON DELETE CASCADE,
        step INTEGER NOT NULL, total INTEGER NOT NULL, read BOOLEAN NOT NULL DEFAULT FALSE)""",
    "CREATE INDEX sdserve_job_events_job ON sdserve_job_events (job_id, read)",
    """CREATE TABLE sdserve_webhooks (id BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES sdserve_jobs (id) ON DELETE CASCADE,
        url TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX sdserve_webhooks_due ON sdserve_webhooks (next_at)",
    """CREATE TABLE sdserve_workers (worker_id TEXT PRIMARY KEY,
        heartbeat_at DOUBLE PRECISION NOT NULL, job_id TEXT, delivery_worker_id BIGINT)""",
]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # procrastinate's schema, through its own API, unless someone applied it by hand.
        found = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
        if found is None:
            bind.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))
    for statement in _POSTGRESQL if bind.dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the first schema has nothing to go back to")
