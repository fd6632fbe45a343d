"""The embedded job store: one SQLite file in WAL mode, shared by the API and worker processes."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdserve.canonical import ImageResult
from sdserve.jobs.models import Job, JobCounts, JobStatus, ProgressEvent
from sdserve.jobs.store import (
    JSON_COLUMNS,
    JobStore,
    WebhookDelivery,
    WorkerInfo,
    job_counts,
    job_from_row,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    dialect TEXT NOT NULL,
    extra TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    input TEXT NOT NULL,
    policy TEXT NOT NULL,
    webhook TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    ttl_s REAL NOT NULL,
    timeout_s REAL,
    low_priority INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retried INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    heartbeat_at REAL,
    progress_step INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, low_priority, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    total INTEGER NOT NULL,
    read INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, read);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    heartbeat_at REAL NOT NULL,
    job_id TEXT
);
"""

_WEBHOOK_STATES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMED_OUT)
_FINISH_SQL = "status = ?, finished_at = ?, expires_at = ? + ttl_s, heartbeat_at = NULL"


def _row_to_job(row: sqlite3.Row) -> Job:
    decoded = {column: json.loads(row[column]) for column in JSON_COLUMNS}
    return job_from_row({**dict(row), **decoded})


class SqliteJobStore(JobStore):
    """Jobs in a SQLite file; one connection per thread, writes in IMMEDIATE transactions."""

    def __init__(self, path: Path, default_ttl_s: float, models: list[str] | None = None) -> None:
        """`models`: the only models whose jobs `claim` takes (None: every model)."""
        self._path = path
        self._models = models
        self._default_ttl_s = default_ttl_s
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        # executescript commits on its own; CREATE ... IF NOT EXISTS is safe to race.
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def create(self, job: Job) -> int:
        ttl_s = job.policy.ttl_ms / 1000 if job.policy.ttl_ms else self._default_ttl_s
        timeout_ms = job.policy.execution_timeout_ms
        with self._write() as db:
            # A counter, not MAX(number) + 1: numbers of deleted jobs are never handed out again.
            number = db.execute(
                "INSERT INTO counters (name, value) VALUES ('job', 1)"
                " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()[0]
            db.execute(
                "INSERT INTO jobs (id, number, owner, endpoint, dialect, extra, status, request,"
                " input, policy, webhook, created_at, ttl_s, timeout_s, low_priority)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    number,
                    job.owner,
                    job.endpoint,
                    job.dialect,
                    json.dumps(job.extra),
                    job.status.value,
                    job.request.model_dump_json(),
                    json.dumps(job.input),
                    job.policy.model_dump_json(),
                    job.webhook,
                    job.created_at,
                    ttl_s,
                    timeout_ms / 1000 if timeout_ms else None,
                    int(job.policy.low_priority),
                ),
            )
        return int(number)

    def get(self, job_id: str) -> Job | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _row_to_job(row)

    def get_by_number(self, number: int) -> Job | None:
        row = (
            self._connection().execute("SELECT * FROM jobs WHERE number = ?", (number,)).fetchone()
        )
        return None if row is None else _row_to_job(row)

    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        rows = self._connection().execute(
            f"SELECT id, status FROM jobs WHERE id IN ({marks})", job_ids
        )
        return {row["id"]: JobStatus(row["status"]) for row in rows}

    def claim(self, worker_id: str, now: float) -> Job | None:
        models = self._models
        only = "" if models is None else f" AND endpoint IN ({','.join('?' * len(models))})"
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', started_at = ?, worker_id = ?,"
                " heartbeat_at = ?, attempts = attempts + 1, progress_step = 0, progress_total = 0"
                f" WHERE id = (SELECT id FROM jobs WHERE status = 'IN_QUEUE'{only}"
                " ORDER BY low_priority, created_at LIMIT 1) RETURNING *",
                (now, worker_id, now, *(models or [])),
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM job_events WHERE job_id = ?", (row["id"],))
        return None if row is None else _row_to_job(row)

    def heartbeat(self, worker_id: str, job_id: str | None, now: float) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO workers (worker_id, heartbeat_at, job_id) VALUES (?,?,?)"
                " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = ?, job_id = ?",
                (worker_id, now, job_id, now, job_id),
            )
            db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE worker_id = ? AND status = 'IN_PROGRESS'",
                (now, worker_id),
            )

    def remove_worker(self, worker_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def workers(self, alive_since: float) -> list[WorkerInfo]:
        rows = self._connection().execute(
            "SELECT * FROM workers WHERE heartbeat_at >= ?", (alive_since,)
        )
        return [WorkerInfo(**dict(row)) for row in rows]

    def add_progress(self, job_id: str, attempt: int, step: int, total: int) -> JobStatus | None:
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET progress_step = ?, progress_total = ?"
                " WHERE id = ? AND attempts = ? RETURNING status",
                (step, total, job_id, attempt),
            ).fetchone()
            if row is None:
                return None
            if row["status"] == JobStatus.IN_PROGRESS:
                db.execute(
                    "INSERT INTO job_events (job_id, step, total) VALUES (?,?,?)",
                    (job_id, step, total),
                )
        return JobStatus(row["status"])

    def attempt_status(self, job_id: str, attempt: int) -> JobStatus | None:
        row = (
            self._connection()
            .execute("SELECT status FROM jobs WHERE id = ? AND attempts = ?", (job_id, attempt))
            .fetchone()
        )
        return None if row is None else JobStatus(row["status"])

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        now: float,
        outputs: list[ImageResult] | None = None,
        error: str | None = None,
    ) -> bool:
        encoded = json.dumps([o.model_dump() for o in outputs or []])
        with self._write() as db:
            row = db.execute(
                f"UPDATE jobs SET {_FINISH_SQL}, outputs = ?, error = ?"
                " WHERE id = ? AND attempts = ? AND status = 'IN_PROGRESS' RETURNING webhook",
                (status.value, now, now, encoded, error, job_id, attempt),
            ).fetchone()
            if row is not None:
                self._enqueue_webhook(db, job_id, row["webhook"], status, now)
        return row is not None

    def release(self, job_id: str, attempt: int) -> None:
        """Nothing to free: the job's row is its own queue entry."""

    @staticmethod
    def _enqueue_webhook(
        db: sqlite3.Connection, job_id: str, url: str | None, status: JobStatus, now: float
    ) -> None:
        if url and status in _WEBHOOK_STATES:
            db.execute(
                "INSERT INTO webhooks (job_id, url, next_at) VALUES (?,?,?)", (job_id, url, now)
            )

    def cancel(self, job_id: str, now: float) -> Job | None:
        with self._write() as db:
            db.execute(
                f"UPDATE jobs SET {_FINISH_SQL}"
                " WHERE id = ? AND status IN ('IN_QUEUE', 'IN_PROGRESS')",
                (JobStatus.CANCELLED.value, now, now, job_id),
            )
        return self.get(job_id)

    def retry(self, job_id: str, now: float) -> bool:
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', created_at = ?, started_at = NULL,"
                " finished_at = NULL, expires_at = NULL, error = NULL, outputs = '[]',"
                " worker_id = NULL, attempts = 0, retried = retried + 1,"
                " progress_step = 0, progress_total = 0"
                " WHERE id = ? AND status IN ('FAILED', 'TIMED_OUT') RETURNING id",
                (now, job_id),
            ).fetchone()
        return row is not None

    def purge(self, owner: str, endpoint: str) -> int:
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM jobs WHERE owner = ? AND endpoint = ? AND status = 'IN_QUEUE'",
                (owner, endpoint),
            )
        return cursor.rowcount

    def requeue_orphans(
        self, worker_ids: list[str] | None, stale_before: float, max_attempts: int, now: float
    ) -> list[str]:
        args: list[object]
        if worker_ids is None:
            where, args = "heartbeat_at < ?", [stale_before]
        else:
            marks = ",".join("?" * len(worker_ids)) or "NULL"
            where, args = f"worker_id IN ({marks})", list(worker_ids)
        with self._write() as db:
            rows = db.execute(
                f"SELECT id, attempts, webhook FROM jobs WHERE status = 'IN_PROGRESS' AND {where}",
                args,
            ).fetchall()
            for row in rows:
                self._requeue_one(db, row, max_attempts, now)
        return [row["id"] for row in rows]

    def _requeue_one(
        self, db: sqlite3.Connection, row: sqlite3.Row, max_attempts: int, now: float
    ) -> None:
        if row["attempts"] < max_attempts:
            db.execute(
                "UPDATE jobs SET status = 'IN_QUEUE', started_at = NULL, worker_id = NULL,"
                " heartbeat_at = NULL WHERE id = ?",
                (row["id"],),
            )
            return
        error = (
            f"the worker process died while running this job, {row['attempts']} times;"
            " giving up (the request may exhaust the worker's memory)"
        )
        db.execute(
            f"UPDATE jobs SET {_FINISH_SQL}, error = ? WHERE id = ?",
            (JobStatus.FAILED.value, now, now, error, row["id"]),
        )
        self._enqueue_webhook(db, row["id"], row["webhook"], JobStatus.FAILED, now)

    def time_out_overdue(self, now: float) -> list[str]:
        with self._write() as db:
            rows = db.execute(
                f"UPDATE jobs SET {_FINISH_SQL}, error = 'execution timeout exceeded'"
                " WHERE status = 'IN_PROGRESS' AND timeout_s IS NOT NULL"
                " AND started_at + timeout_s < ? RETURNING id, webhook",
                (JobStatus.TIMED_OUT.value, now, now, now),
            ).fetchall()
            for row in rows:
                self._enqueue_webhook(db, row["id"], row["webhook"], JobStatus.TIMED_OUT, now)
        return [row["id"] for row in rows]

    def delete_expired(self, now: float) -> list[Job]:
        with self._write() as db:
            rows = db.execute(
                "DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at < ? RETURNING *",
                (now,),
            ).fetchall()
            ids = [row["id"] for row in rows]
            marks = ",".join("?" * len(ids))
            if ids:
                db.execute(f"DELETE FROM job_events WHERE job_id IN ({marks})", ids)
                db.execute(f"DELETE FROM webhooks WHERE job_id IN ({marks})", ids)
        return [_row_to_job(row) for row in rows]

    def counts(self, endpoint: str) -> JobCounts:
        rows = self._connection().execute(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE endpoint = ? GROUP BY status",
            (endpoint,),
        )
        by_status = {row["status"]: row["n"] for row in rows}
        retried = (
            self._connection()
            .execute("SELECT COALESCE(SUM(retried), 0) FROM jobs WHERE endpoint = ?", (endpoint,))
            .fetchone()[0]
        )
        return job_counts(by_status, retried)

    def queued(self, endpoint: str) -> int:
        row = (
            self._connection()
            .execute(
                "SELECT COUNT(*) FROM jobs WHERE endpoint = ? AND status = 'IN_QUEUE'", (endpoint,)
            )
            .fetchone()
        )
        return int(row[0])

    def read_stream(self, job_id: str) -> list[ProgressEvent]:
        with self._write() as db:
            rows = db.execute(
                "UPDATE job_events SET read = 1 WHERE job_id = ? AND read = 0"
                " RETURNING seq, step, total",
                (job_id,),
            ).fetchall()
        return [ProgressEvent(step=r["step"], total=r["total"]) for r in sorted(rows, key=_seq)]

    def due_webhooks(self, now: float, limit: int) -> list[WebhookDelivery]:
        rows = self._connection().execute(
            "SELECT id, job_id, url, attempts FROM webhooks WHERE next_at <= ?"
            " ORDER BY next_at LIMIT ?",
            (now, limit),
        )
        return [WebhookDelivery(**dict(row)) for row in rows]

    def webhook_attempted(self, delivery_id: int, delivered: bool, next_at: float | None) -> None:
        with self._write() as db:
            if delivered or next_at is None:
                db.execute("DELETE FROM webhooks WHERE id = ?", (delivery_id,))
            else:
                db.execute(
                    "UPDATE webhooks SET attempts = attempts + 1, next_at = ? WHERE id = ?",
                    (next_at, delivery_id),
                )


def _seq(row: sqlite3.Row) -> int:
    return int(row["seq"])
