"""`sdserve db upgrade`: sdserve's and procrastinate's tables, created or upgraded under a lock.

Every node runs this at start, so the lock matters: when several start at once, one applies the
changes and the others wait for it and then find nothing left to do.
"""

from __future__ import annotations

import logging
from importlib import metadata, resources

import psycopg
from procrastinate.schema import SchemaManager

log = logging.getLogger(__name__)

_LOCK = "sdserve-schema"

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE SEQUENCE sdserve_job_number;
    CREATE TABLE sdserve_jobs (
        id TEXT PRIMARY KEY,
        number BIGINT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        dialect TEXT NOT NULL,
        extra JSONB NOT NULL,
        status TEXT NOT NULL,
        request JSONB NOT NULL,
        input JSONB NOT NULL,
        policy JSONB NOT NULL,
        webhook TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        ttl_s DOUBLE PRECISION NOT NULL,
        timeout_s DOUBLE PRECISION,
        low_priority BOOLEAN NOT NULL DEFAULT FALSE,
        outputs JSONB NOT NULL DEFAULT '[]',
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        retried INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT,
        delivery_id BIGINT,
        progress_step INTEGER NOT NULL DEFAULT 0,
        progress_total INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX sdserve_jobs_endpoint ON sdserve_jobs (endpoint, status);
    CREATE INDEX sdserve_jobs_expiry ON sdserve_jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX sdserve_jobs_running ON sdserve_jobs (status) WHERE status = 'IN_PROGRESS';
    CREATE TABLE sdserve_job_events (
        seq BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES sdserve_jobs (id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        total INTEGER NOT NULL,
        read BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX sdserve_job_events_job ON sdserve_job_events (job_id, read);
    CREATE TABLE sdserve_webhooks (
        id BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES sdserve_jobs (id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX sdserve_webhooks_due ON sdserve_webhooks (next_at);
    CREATE TABLE sdserve_workers (
        worker_id TEXT PRIMARY KEY,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        job_id TEXT,
        delivery_worker_id BIGINT
    );
    """,
]
"""sdserve's own schema changes, applied in order; append, never edit a released one."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split("_", 1)[0].split("."))


def _procrastinate_steps(applied: str | None) -> list[str]:
    """The procrastinate SQL to run: its whole schema on a fresh database, else the migrations
    its installed release ships beyond the one applied before."""
    if applied is None:
        return [SchemaManager.get_schema()]
    installed = _version_key(metadata.version("procrastinate"))
    done = _version_key(applied)
    folder = resources.files("procrastinate.sql") / "migrations"
    names = sorted(
        (f.name for f in folder.iterdir() if f.name.endswith(".sql")),
        key=lambda n: (_version_key(n), n),
    )
    return [
        (folder / name).read_text(encoding="utf-8")
        for name in names
        if done < _version_key(name)[:3] <= installed
    ]


def upgrade(conninfo: str) -> list[str]:
    """Bring the database's schema up to date; return what was applied (empty when current)."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as db, db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS sdserve_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        rows: dict[str, str] = dict(db.execute("SELECT key, value FROM sdserve_meta").fetchall())
        found = db.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        installed = metadata.version("procrastinate")
        procrastinate_at = rows.get("procrastinate")
        if found and found[0] and procrastinate_at is None:
            # Someone applied procrastinate's schema by hand: take it as the installed release.
            log.warning(
                "procrastinate tables exist without a recorded version; assuming %s", installed
            )
            procrastinate_at = installed
            _set(db, "procrastinate", installed)
        if procrastinate_at is not None and _version_key(installed) < _version_key(
            procrastinate_at
        ):
            # An older node starting beside upgraded ones: never "downgrade" the record.
            log.warning(
                "this node has procrastinate %s, the database %s: upgrade this node",
                installed,
                procrastinate_at,
            )
        elif procrastinate_at != installed:
            for sql in _procrastinate_steps(procrastinate_at):
                db.execute(sql.encode())
            _set(db, "procrastinate", installed)
            applied.append(f"procrastinate {procrastinate_at or 'none'} -> {installed}")
        version = int(rows.get("schema", "0"))
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute(sql.encode())
            _set(db, "schema", str(number))
            applied.append(f"sdserve schema {number}")
    for step in applied:
        log.info("database upgraded: %s", step)
    return applied


def _set(db: psycopg.Connection[tuple[str, str]], key: str, value: str) -> None:
    db.execute(
        "INSERT INTO sdserve_meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (key, value),
    )
