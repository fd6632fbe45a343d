"""The shared job store: job state in PostgreSQL, job delivery through procrastinate.

sdserve's own tables hold what the API answers with (status, outputs, progress, webhooks).
Procrastinate delivers: one queue per model, priorities, worker heartbeats, stalled-job
detection and abort flags. Each sdserve job has at most one procrastinate job (its "delivery")
at a time; the row's `attempts` says which run of it is current, so a stale worker can never
finish, or close the delivery of, a run that is not its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job as Delivery
from procrastinate.jobs import Status
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from sdserve.canonical import ImageResult
from sdserve.jobs.models import Job, JobCounts, JobStatus, ProgressEvent
from sdserve.jobs.store import (
    JobStore,
    WebhookDelivery,
    WorkerInfo,
    job_counts,
    job_from_row,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

TASK_NAME = "sdserve.generate"
NORMAL_PRIORITY = 0
LOW_PRIORITY = -10
WEBHOOK_LEASE_S = 60.0
"""A webhook being delivered by one API node is hidden from the others this long."""

_WEBHOOK_STATES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMED_OUT)
_FINISH_SQL = "status = %s, finished_at = %s, expires_at = %s + ttl_s"
_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
_HELD = "SELECT 1 FROM procrastinate_jobs WHERE id = %s AND status = 'doing' AND worker_id = %s"
"""A delivery still held by the given procrastinate worker (not handed on by a sweeper)."""


def queue_name(model: str) -> str:
    """The procrastinate queue of a model's jobs."""
    return f"sdserve.{model}"


async def _opened(app: App) -> None:
    await app.open_async()


class _EventLoop:
    """A private event loop thread: procrastinate's job manager is async, this store is not."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="procrastinate"
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result(timeout=60)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class PostgresJobStore(JobStore):
    """Jobs in PostgreSQL, shared by any number of API nodes and workers on any machines."""

    def __init__(
        self, conninfo: str, default_ttl_s: float, models: list[str] | None = None
    ) -> None:
        """`models`: the only models whose jobs `claim` takes (None: every model)."""
        self._conninfo = conninfo
        self._default_ttl_s = default_ttl_s
        self._queues = None if models is None else [queue_name(m) for m in models]
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            conninfo,
            connection_class=psycopg.Connection[DictRow],
            kwargs={"row_factory": dict_row},
            min_size=1,
            max_size=8,
            open=True,
        )
        self._loop = _EventLoop()
        self._app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=1, max_size=4))
        self._loop.run(_opened(self._app))
        self._delivery_workers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._job_deferred = threading.Event()
        self._listener: concurrent.futures.Future[None] | None = None

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[DictRow]]:
        with self._pool.connection() as db, db.transaction():
            yield db

    def wait_for_jobs(self, timeout_s: float) -> None:
        """Wake on procrastinate's notification of a new job in one of our queues."""
        if self._listener is None:

            async def on_notification(channel: str, notification: object) -> None:
                self._job_deferred.set()

            self._listener = self._loop.submit(
                self._app.job_manager.listen_for_jobs(
                    on_notification=on_notification, queues=self._queues
                )
            )
        self._job_deferred.wait(timeout_s)
        self._job_deferred.clear()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        try:
            self._loop.run(self._app.close_async())
        finally:
            self._loop.close()
            self._pool.close()

    # --- delivery (procrastinate) -------------------------------------------------------

    def _deliver(self, job_id: str, endpoint: str, low_priority: bool) -> None:
        """Hand the job to procrastinate and remember the delivery's id."""
        task = self._app.configure_task(
            TASK_NAME,
            queue=queue_name(endpoint),
            priority=LOW_PRIORITY if low_priority else NORMAL_PRIORITY,
        )
        delivery_id = self._loop.run(task.defer_async(job_id=job_id))
        with self._tx() as db:
            db.execute(
                "UPDATE sdserve_jobs SET delivery_id = %s WHERE id = %s", (delivery_id, job_id)
            )

    def _close_delivery(self, delivery_id: int | None, status: Status) -> None:
        if delivery_id is None:
            return
        try:
            self._loop.run(
                self._app.job_manager.finish_job_by_id_async(delivery_id, status, delete_job=True)
            )
        except ConnectorException:
            log.debug("delivery %s was already closed", delivery_id)

    def _cancel_delivery(self, delivery_id: int | None) -> None:
        if delivery_id is not None:
            self._loop.run(self._app.job_manager.cancel_job_by_id_async(delivery_id, abort=True))

    def _delivery_worker(self, worker_id: str) -> int:
        """The procrastinate worker standing for an sdserve worker, registered on first use."""
        with self._lock:
            known = self._delivery_workers.get(worker_id)
            if known is not None:
                return known
            registered = self._loop.run(self._app.job_manager.register_worker())
            self._delivery_workers[worker_id] = registered
        with self._tx() as db:
            db.execute(
                "INSERT INTO sdserve_workers (worker_id, heartbeat_at, delivery_worker_id)"
                " VALUES (%s, extract(epoch FROM now()), %s) ON CONFLICT (worker_id)"
                " DO UPDATE SET delivery_worker_id = EXCLUDED.delivery_worker_id",
                (worker_id, registered),
            )
        return registered

    def _forget_delivery_workers(self, worker_ids: list[str]) -> None:
        """Unregister workers from procrastinate: their running deliveries count as stalled."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT worker_id, delivery_worker_id FROM sdserve_workers"
                " WHERE worker_id = ANY(%s) AND delivery_worker_id IS NOT NULL",
                (worker_ids,),
            ).fetchall()
        with self._lock:
            for worker_id in worker_ids:
                self._delivery_workers.pop(worker_id, None)
        for row in rows:
            self._loop.run(self._app.job_manager.unregister_worker(row["delivery_worker_id"]))

    # --- the JobStore contract ----------------------------------------------------------

    def create(self, job: Job) -> int:
        ttl_s = job.policy.ttl_ms / 1000 if job.policy.ttl_ms else self._default_ttl_s
        timeout_ms = job.policy.execution_timeout_ms
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO sdserve_jobs (id, number, owner, endpoint, dialect, extra, status,"
                " request, input, policy, webhook, created_at, ttl_s, timeout_s, low_priority)"
                " VALUES (%s, nextval('sdserve_job_number'), %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s, %s) RETURNING number",
                (
                    job.id,
                    job.owner,
                    job.endpoint,
                    job.dialect,
                    Jsonb(job.extra),
                    job.status.value,
                    Jsonb(job.request.model_dump(mode="json")),
                    Jsonb(job.input),
                    Jsonb(job.policy.model_dump(mode="json")),
                    job.webhook,
                    job.created_at,
                    ttl_s,
                    timeout_ms / 1000 if timeout_ms else None,
                    job.policy.low_priority,
                ),
            ).fetchone()
        assert row is not None
        try:
            self._deliver(job.id, job.endpoint, job.policy.low_priority)
        except BaseException:
            with self._tx() as db:  # never leave a job nobody will ever run
                db.execute("DELETE FROM sdserve_jobs WHERE id = %s", (job.id,))
            raise
        return int(row["number"])

    def get(self, job_id: str) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM sdserve_jobs WHERE id = %s", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def get_by_number(self, number: int) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM sdserve_jobs WHERE number = %s", (number,)).fetchone()
        return None if row is None else job_from_row(row)

    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, status FROM sdserve_jobs WHERE id = ANY(%s)", (job_ids,)
            ).fetchall()
        return {row["id"]: JobStatus(row["status"]) for row in rows}

    def claim(self, worker_id: str, now: float) -> Job | None:
        while True:
            delivery = self._fetch(worker_id)
            if delivery is None:
                return None
            job = self._start(delivery, worker_id, now)
            if job is not None:
                return job
            # Cancelled, purged or expired between queueing and now: nothing to run. A delivery
            # a sweeper has meanwhile handed on (we were silent too long) is not ours to close.
            if self._holds(delivery, worker_id):
                self._close_delivery(delivery.id, Status.ABORTED)

    def _holds(self, delivery: Delivery, worker_id: str) -> bool:
        with self._tx() as db:
            row = db.execute(_HELD, (delivery.id, self._delivery_worker(worker_id))).fetchone()
        return row is not None

    def _fetch(self, worker_id: str) -> Delivery | None:
        fetcher = self._delivery_worker(worker_id)
        try:
            return self._loop.run(self._app.job_manager.fetch_job(self._queues, fetcher))
        except ConnectorException:
            # Our registration was pruned (we were silent too long): register afresh, once.
            log.warning("worker %s was unregistered from the queue; registering again", worker_id)
            with self._lock:
                self._delivery_workers.pop(worker_id, None)
            fetcher = self._delivery_worker(worker_id)
            return self._loop.run(self._app.job_manager.fetch_job(self._queues, fetcher))

    def _start(self, delivery: Delivery, worker_id: str, now: float) -> Job | None:
        with self._tx() as db:
            row = db.execute(
                "UPDATE sdserve_jobs SET status = 'IN_PROGRESS', started_at = %s, worker_id = %s,"
                " attempts = attempts + 1, progress_step = 0, progress_total = 0,"
                f" delivery_id = %s WHERE id = %s AND status = 'IN_QUEUE' AND EXISTS ({_HELD})"
                " RETURNING *",
                (
                    now,
                    worker_id,
                    delivery.id,
                    delivery.task_kwargs.get("job_id"),
                    delivery.id,
                    self._delivery_worker(worker_id),
                ),
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM sdserve_job_events WHERE job_id = %s", (row["id"],))
                db.execute(
                    "UPDATE sdserve_workers SET job_id = %s WHERE worker_id = %s",
                    (row["id"], worker_id),
                )
        return None if row is None else job_from_row(row)

    def heartbeat(self, worker_id: str, job_id: str | None, now: float) -> None:
        fetcher = self._delivery_worker(worker_id)
        self._loop.run(self._app.job_manager.update_heartbeat(fetcher))
        with self._tx() as db:
            registered = db.execute(
                "SELECT 1 FROM procrastinate_workers WHERE id = %s", (fetcher,)
            ).fetchone()
        if registered is None:  # pruned while silent: the next claim registers again
            with self._lock:
                self._delivery_workers.pop(worker_id, None)
        with self._tx() as db:
            db.execute(
                "INSERT INTO sdserve_workers (worker_id, heartbeat_at, job_id) VALUES (%s,%s,%s)"
                " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = %s, job_id = %s",
                (worker_id, now, job_id, now, job_id),
            )

    def remove_worker(self, worker_id: str) -> None:
        self._forget_delivery_workers([worker_id])
        with self._tx() as db:
            db.execute("DELETE FROM sdserve_workers WHERE worker_id = %s", (worker_id,))

    def workers(self, alive_since: float) -> list[WorkerInfo]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT worker_id, heartbeat_at, job_id FROM sdserve_workers"
                " WHERE heartbeat_at >= %s ORDER BY worker_id",
                (alive_since,),
            ).fetchall()
        return [WorkerInfo(**row) for row in rows]

    def add_progress(self, job_id: str, attempt: int, step: int, total: int) -> JobStatus | None:
        with self._tx() as db:
            row = db.execute(
                "UPDATE sdserve_jobs SET progress_step = %s, progress_total = %s"
                " WHERE id = %s AND attempts = %s RETURNING status",
                (step, total, job_id, attempt),
            ).fetchone()
            if row is None:
                return None
            if row["status"] == JobStatus.IN_PROGRESS:
                db.execute(
                    "INSERT INTO sdserve_job_events (job_id, step, total) VALUES (%s,%s,%s)",
                    (job_id, step, total),
                )
        return JobStatus(row["status"])

    def attempt_status(self, job_id: str, attempt: int) -> JobStatus | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT status FROM sdserve_jobs WHERE id = %s AND attempts = %s",
                (job_id, attempt),
            ).fetchone()
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
        encoded = Jsonb([o.model_dump() for o in outputs or []])
        with self._tx() as db:
            row = db.execute(
                f"UPDATE sdserve_jobs SET {_FINISH_SQL}, outputs = %s, error = %s"
                " WHERE id = %s AND attempts = %s AND status = 'IN_PROGRESS'"
                " RETURNING webhook, delivery_id",
                (status.value, now, now, encoded, error, job_id, attempt),
            ).fetchone()
            if row is not None:
                self._enqueue_webhook(db, job_id, row["webhook"], status, now)
        if row is None:
            self.release(job_id, attempt)
            return False
        ok = status == JobStatus.COMPLETED
        self._close_delivery(row["delivery_id"], Status.SUCCEEDED if ok else Status.FAILED)
        return True

    def release(self, job_id: str, attempt: int) -> None:
        """Close the delivery of a run that ended elsewhere (cancelled or timed out), if it is
        still this run's: a re-queued job's delivery belongs to its next run."""
        with self._tx() as db:
            row = db.execute(
                "SELECT delivery_id FROM sdserve_jobs WHERE id = %s AND attempts = %s"
                " AND status = ANY(%s)",
                (job_id, attempt, list(_FINAL)),
            ).fetchone()
        if row is not None:
            self._close_delivery(row["delivery_id"], Status.ABORTED)

    @staticmethod
    def _enqueue_webhook(
        db: psycopg.Connection[DictRow], job_id: str, url: str | None, status: JobStatus, now: float
    ) -> None:
        if url and status in _WEBHOOK_STATES:
            db.execute(
                "INSERT INTO sdserve_webhooks (job_id, url, next_at) VALUES (%s,%s,%s)",
                (job_id, url, now),
            )

    def cancel(self, job_id: str, now: float) -> Job | None:
        with self._tx() as db:
            row = db.execute(
                f"UPDATE sdserve_jobs SET {_FINISH_SQL}"
                " WHERE id = %s AND status IN ('IN_QUEUE', 'IN_PROGRESS') RETURNING delivery_id",
                (JobStatus.CANCELLED.value, now, now, job_id),
            ).fetchone()
        if row is not None:
            # Queued: procrastinate drops it. Running: its worker sees the abort flag, and our
            # status, at the next step.
            self._cancel_delivery(row["delivery_id"])
        return self.get(job_id)

    def retry(self, job_id: str, now: float) -> bool:
        with self._tx() as db:
            row = db.execute(
                "UPDATE sdserve_jobs SET status = 'IN_QUEUE', created_at = %s, started_at = NULL,"
                " finished_at = NULL, expires_at = NULL, error = NULL, outputs = '[]',"
                " worker_id = NULL, attempts = 0, retried = retried + 1, delivery_id = NULL,"
                " progress_step = 0, progress_total = 0"
                " WHERE id = %s AND status IN ('FAILED', 'TIMED_OUT')"
                " RETURNING endpoint, low_priority",
                (now, job_id),
            ).fetchone()
        if row is None:
            return False
        self._deliver(job_id, row["endpoint"], row["low_priority"])
        return True

    def purge(self, owner: str, endpoint: str) -> int:
        with self._tx() as db:
            rows = db.execute(
                "DELETE FROM sdserve_jobs WHERE owner = %s AND endpoint = %s"
                " AND status = 'IN_QUEUE' RETURNING delivery_id",
                (owner, endpoint),
            ).fetchall()
        for row in rows:
            self._cancel_delivery(row["delivery_id"])
        return len(rows)

    def requeue_orphans(
        self, worker_ids: list[str] | None, stale_before: float, max_attempts: int, now: float
    ) -> list[str]:
        if worker_ids is not None:
            # Only these workers' runs: once unregistered, procrastinate reports them stalled.
            self._forget_delivery_workers(worker_ids)
            silent_s = 10 * 365 * 86400.0
        else:
            silent_s = max(0.0, now - stale_before)
        stalled = self._loop.run(
            self._app.job_manager.get_stalled_jobs(
                task_name=TASK_NAME, seconds_since_heartbeat=silent_s
            )
        )
        requeued: list[str] = []
        for delivery in stalled:
            job_id = self._recover(delivery, silent_s, max_attempts, now)
            if job_id is not None:
                requeued.append(job_id)
        if worker_ids is None:  # dead workers' registrations go too (a live one re-registers)
            self._loop.run(self._app.job_manager.prune_stalled_workers(silent_s))
        return requeued

    def _recover(
        self, delivery: Delivery, silent_s: float, max_attempts: int, now: float
    ) -> str | None:
        """Put a stalled delivery's job back in its queue, or fail it when out of attempts.

        Every API node sweeps, so another may be recovering the same delivery at the same time:
        the job row is locked while deciding, and a delivery another node already handed on is
        left alone."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id, status, attempts, webhook FROM sdserve_jobs WHERE delivery_id = %s"
                " FOR UPDATE",
                (delivery.id,),
            ).fetchone()
            if not self._still_stalled(db, delivery, silent_s):
                return None
            status = None if row is None else JobStatus(row["status"])
            recovered = None
            if row is not None and status == JobStatus.IN_PROGRESS:
                recovered = str(row["id"])
                if row["attempts"] < max_attempts:
                    db.execute(
                        "UPDATE sdserve_jobs SET status = 'IN_QUEUE', started_at = NULL,"
                        " worker_id = NULL WHERE id = %s",
                        (row["id"],),
                    )
                    status = JobStatus.IN_QUEUE
                else:
                    error = (
                        f"the worker running this job died or went silent, {row['attempts']}"
                        " times; giving up (the request may exhaust the worker's memory)"
                    )
                    db.execute(
                        f"UPDATE sdserve_jobs SET {_FINISH_SQL}, error = %s WHERE id = %s",
                        (JobStatus.FAILED.value, now, now, error, row["id"]),
                    )
                    self._enqueue_webhook(db, row["id"], row["webhook"], JobStatus.FAILED, now)
                    status = JobStatus.FAILED
        if row is None or status != JobStatus.IN_QUEUE:
            # The job ended or went away (or we just failed it): its delivery is done too.
            self._close_delivery(delivery.id, Status.FAILED)
        else:
            # Queued again (by us just now, or its worker died between taking the delivery
            # and starting the job): hand the delivery on.
            retry_at = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
            try:
                self._loop.run(self._app.job_manager.retry_job(delivery, retry_at=retry_at))
            except ConnectorException:
                log.debug("delivery %s was already handed on", delivery.id)
        return recovered

    @staticmethod
    def _still_stalled(
        db: psycopg.Connection[DictRow], delivery: Delivery, silent_s: float
    ) -> bool:
        """Whether the delivery is still running on a silent or departed worker (and not, say,
        already handed on and taken by a live one since the stalled list was read)."""
        row = db.execute(
            "SELECT 1 FROM procrastinate_jobs job LEFT JOIN procrastinate_workers w"
            " ON w.id = job.worker_id WHERE job.id = %s AND job.status = 'doing'"
            " AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => %s))",
            (delivery.id, silent_s),
        ).fetchone()
        return row is not None

    def time_out_overdue(self, now: float) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE sdserve_jobs SET {_FINISH_SQL}, error = 'execution timeout exceeded'"
                " WHERE status = 'IN_PROGRESS' AND timeout_s IS NOT NULL"
                " AND started_at + timeout_s < %s RETURNING id, webhook",
                (JobStatus.TIMED_OUT.value, now, now, now),
            ).fetchall()
            for row in rows:
                self._enqueue_webhook(db, row["id"], row["webhook"], JobStatus.TIMED_OUT, now)
        return [row["id"] for row in rows]

    def delete_expired(self, now: float) -> list[Job]:
        with self._tx() as db:
            rows = db.execute(
                "DELETE FROM sdserve_jobs WHERE expires_at IS NOT NULL AND expires_at < %s"
                " RETURNING *",
                (now,),
            ).fetchall()
        return [job_from_row(row) for row in rows]

    def counts(self, endpoint: str) -> JobCounts:
        with self._tx() as db:
            rows = db.execute(
                "SELECT status, COUNT(*) AS n, SUM(retried) AS retried FROM sdserve_jobs"
                " WHERE endpoint = %s GROUP BY status",
                (endpoint,),
            ).fetchall()
        by_status = {row["status"]: row["n"] for row in rows}
        return job_counts(by_status, sum(int(row["retried"] or 0) for row in rows))

    def queued(self, endpoint: str) -> int:
        with self._tx() as db:
            row = db.execute(
                "SELECT COUNT(*) AS n FROM sdserve_jobs WHERE endpoint = %s"
                " AND status = 'IN_QUEUE'",
                (endpoint,),
            ).fetchone()
        return int(row["n"]) if row else 0

    def read_stream(self, job_id: str) -> list[ProgressEvent]:
        with self._tx() as db:
            rows = db.execute(
                "UPDATE sdserve_job_events SET read = TRUE WHERE job_id = %s AND NOT read"
                " RETURNING seq, step, total",
                (job_id,),
            ).fetchall()
        ordered = sorted(rows, key=lambda r: int(r["seq"]))
        return [ProgressEvent(step=r["step"], total=r["total"]) for r in ordered]

    def due_webhooks(self, now: float, limit: int) -> list[WebhookDelivery]:
        # Leased: another API node does not deliver the same webhook at the same time.
        with self._tx() as db:
            rows = db.execute(
                "UPDATE sdserve_webhooks SET next_at = %s WHERE id IN (SELECT id FROM"
                " sdserve_webhooks WHERE next_at <= %s ORDER BY next_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED) RETURNING id, job_id, url, attempts",
                (now + WEBHOOK_LEASE_S, now, limit),
            ).fetchall()
        return [WebhookDelivery(**row) for row in sorted(rows, key=lambda r: int(r["id"]))]

    def webhook_attempted(self, delivery_id: int, delivered: bool, next_at: float | None) -> None:
        with self._tx() as db:
            if delivered or next_at is None:
                db.execute("DELETE FROM sdserve_webhooks WHERE id = %s", (delivery_id,))
            else:
                db.execute(
                    "UPDATE sdserve_webhooks SET attempts = attempts + 1, next_at = %s"
                    " WHERE id = %s",
                    (next_at, delivery_id),
                )
