"""The shared job store: the job-state core on PostgreSQL, jobs delivered by procrastinate.

Any number of API nodes and workers on any machines share it. What differs from SQLite is only
delivery: a worker claims a job by fetching its procrastinate job, and a dead worker's runs are
found through procrastinate's stalled-job detection (every API node sweeps, so recovery locks
the job's row and leaves a delivery another node already handed on alone).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import psycopg
import sqlalchemy as sa
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job as Delivery

from sdserve.jobs.losses import RunLoss
from sdserve.jobs.migrate import migrate
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.pg_delivery import Deliveries, queue_name
from sdserve.jobs.schema import jobs, workers
from sdserve.jobs.sql_store import SqlJobStore
from sdserve.jobs.transitions import TRANSITIONS, Op
from sdserve.metrics import Ending

log = logging.getLogger(__name__)

_HELD = (
    "EXISTS (SELECT 1 FROM procrastinate_jobs WHERE id = :delivery AND status = 'doing'"
    " AND worker_id = :fetcher)"
)
"""A delivery still held by the given procrastinate worker (not handed on by a sweeper)."""
_STILL_STALLED = sa.text(
    "SELECT 1 FROM procrastinate_jobs job LEFT JOIN procrastinate_workers w"
    " ON w.id = job.worker_id WHERE job.id = :delivery AND job.status = 'doing'"
    " AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => :silent_s))"
)
_REGISTERED = sa.text(
    "INSERT INTO sdserve_workers (worker_id, heartbeat_at, delivery_worker_id)"
    " VALUES (:worker, extract(epoch FROM now()), :fetcher) ON CONFLICT (worker_id)"
    " DO UPDATE SET delivery_worker_id = EXCLUDED.delivery_worker_id"
)
_FOREVER_S = 10 * 365 * 86400.0
deliveries = sa.table(
    "procrastinate_jobs",
    sa.column("id", sa.BigInteger),
    sa.column("status", sa.Text),
    sa.column("worker_id", sa.BigInteger),
    sa.column("priority", sa.Integer),
    sa.column("scheduled_at", sa.DateTime(timezone=True)),
)
"""The columns of procrastinate's job table that claiming a batch reads and writes."""


def postgres_engine(conninfo: str) -> sa.Engine:
    """An engine on the database `conninfo` names (a URL or libpq's key=value form)."""
    return sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(conninfo),
        pool_size=8,
        pool_pre_ping=True,
    )


def _held(delivery_id: int, fetcher: int) -> sa.TextClause:
    return sa.text(_HELD).bindparams(delivery=delivery_id, fetcher=fetcher)


class PostgresJobStore(SqlJobStore):
    """Jobs in PostgreSQL, delivered to workers by procrastinate."""

    def __init__(
        self, conninfo: str, default_ttl_s: float, models: list[str] | None = None
    ) -> None:
        """`models`: the only models whose jobs `claim` takes (None: every model)."""
        engine = postgres_engine(conninfo)
        migrate(engine)  # every node at start; the schema lock makes that safe
        super().__init__(engine, default_ttl_s, models)
        queues = None if models is None else [queue_name(m) for m in models]
        self._deliveries = Deliveries(conninfo, queues)
        self._fetchers: dict[str, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        try:
            self._deliveries.close()
        finally:
            super().close()

    def wait_for_jobs(self, timeout_s: float) -> None:
        """Wake on procrastinate's notification of a new job in one of our queues."""
        self._deliveries.wait(timeout_s)

    # --- delivery hooks -------------------------------------------------------------------

    def _deliver(self, job_id: str, endpoint: str, low_priority: bool) -> None:
        delivery_id = self._deliveries.defer(job_id, endpoint, low_priority)
        with self._tx() as db:
            db.execute(jobs.update().where(jobs.c.id == job_id).values(delivery_id=delivery_id))

    def _close_delivery(self, delivery_id: int | None, status: JobStatus) -> None:
        if delivery_id is not None:
            self._deliveries.close_delivery(delivery_id, status)

    def _drop_deliveries(self, delivery_ids: Sequence[int | None]) -> None:
        for delivery_id in delivery_ids:
            if delivery_id is not None:
                self._deliveries.cancel(delivery_id)

    def release(self, job_id: str, attempt: int) -> None:
        query = sa.select(jobs.c.delivery_id, jobs.c.status).where(
            jobs.c.id == job_id,
            jobs.c.attempts == attempt,
            jobs.c.status.in_(TRANSITIONS[Op.EXPIRE].source_values),
        )
        with self._read() as db:
            row = db.execute(query).first()
        if row is not None:
            self._close_delivery(row.delivery_id, JobStatus(row.status))

    # --- workers: each sdserve worker stands as a procrastinate worker --------------------

    def _fetcher(self, worker_id: str) -> int:
        """The procrastinate worker standing for an sdserve worker, registered on first use."""
        with self._lock:
            known = self._fetchers.get(worker_id)
            if known is not None:
                return known
            registered = self._deliveries.register_worker()
            self._fetchers[worker_id] = registered
        with self._tx() as db:
            db.execute(_REGISTERED, {"worker": worker_id, "fetcher": registered})
        return registered

    def _forget_fetchers(self, worker_ids: list[str]) -> None:
        """Unregister workers from procrastinate: their running deliveries count as stalled."""
        with self._read() as db:
            fetchers = (
                db.execute(
                    sa.select(workers.c.delivery_worker_id).where(
                        workers.c.worker_id.in_(worker_ids),
                        workers.c.delivery_worker_id.is_not(None),
                    )
                )
                .scalars()
                .all()
            )
        with self._lock:
            for worker_id in worker_ids:
                self._fetchers.pop(worker_id, None)
        for fetcher in fetchers:
            self._deliveries.unregister_worker(fetcher)

    def heartbeat(self, worker_id: str, job_id: str | None, now: float) -> None:
        fetcher = self._fetcher(worker_id)
        self._deliveries.heartbeat(fetcher)
        with self._read() as db:
            registered = db.execute(
                sa.text("SELECT 1 FROM procrastinate_workers WHERE id = :id"), {"id": fetcher}
            ).first()
        if registered is None:  # pruned while silent: the next claim registers again
            with self._lock:
                self._fetchers.pop(worker_id, None)
        super().heartbeat(worker_id, job_id, now)

    def remove_worker(self, worker_id: str) -> None:
        self._forget_fetchers([worker_id])
        super().remove_worker(worker_id)

    # --- claim ----------------------------------------------------------------------------

    def claim(self, worker_id: str, now: float) -> Job | None:
        while True:
            delivery = self._fetch(worker_id)
            if delivery is None or delivery.id is None:
                return None
            job_id = str(delivery.task_kwargs.get("job_id"))
            held = _held(delivery.id, self._fetcher(worker_id))
            with self._tx() as db:
                started = self._start(
                    db, sa.and_(jobs.c.id == job_id, held), worker_id, now, delivery.id
                )
            if started:
                return started[0]
            # Cancelled, purged or expired between queueing and now: nothing to run. A delivery
            # a sweeper has meanwhile handed on (we were silent too long) is not ours to close.
            with self._read() as db:
                ours = db.execute(sa.select(sa.literal(1)).where(held)).first()
            if ours is not None:
                self._deliveries.close_delivery(delivery.id, JobStatus.CANCELLED)

    def _claim_alike(
        self, alike: sa.ColumnElement[bool], worker_id: str, now: float, limit: int
    ) -> list[Job]:
        fetcher = self._fetcher(worker_id)
        # procrastinate fetches only the next delivery of a queue; these are chosen by what
        # their jobs share, so they are taken here the way its fetch_job takes one: todo ->
        # doing for our procrastinate worker, skipping rows another worker is taking.
        picked = (
            sa.select(deliveries.c.id)
            .join(jobs, jobs.c.delivery_id == deliveries.c.id)
            .where(
                alike,
                deliveries.c.status == sa.literal_column("'todo'"),
                sa.or_(
                    deliveries.c.scheduled_at.is_(None), deliveries.c.scheduled_at <= sa.func.now()
                ),
            )
            .order_by(deliveries.c.priority.desc(), deliveries.c.id)
            .limit(limit)
            .with_for_update(of=[deliveries, jobs], skip_locked=True)
            .cte("picked")
        )
        with self._tx() as db:
            taken = (
                db.execute(
                    deliveries.update()
                    .where(deliveries.c.id == picked.c.id)
                    .values(status=sa.literal_column("'doing'"), worker_id=fetcher)
                    .returning(deliveries.c.id)
                )
                .scalars()
                .all()
            )
            if not taken:
                return []
            return self._start(db, jobs.c.delivery_id.in_(taken), worker_id, now)

    def _fetch(self, worker_id: str) -> Delivery | None:
        try:
            return self._deliveries.fetch(self._fetcher(worker_id))
        except ConnectorException:
            # Our registration was pruned (we were silent too long): register afresh, once.
            log.warning("worker %s was unregistered from the queue; registering again", worker_id)
            with self._lock:
                self._fetchers.pop(worker_id, None)
            return self._deliveries.fetch(self._fetcher(worker_id))

    # --- dead workers ---------------------------------------------------------------------

    def requeue_orphans(
        self,
        worker_ids: list[str] | None,
        stale_before: float,
        max_attempts: int,
        now: float,
        loss: RunLoss,
    ) -> list[str]:
        if worker_ids is not None:
            # Only these workers' runs: once unregistered, procrastinate reports them stalled.
            self._forget_fetchers(worker_ids)
            silent_s = _FOREVER_S
        else:
            silent_s = max(0.0, now - stale_before)
        recovered = [
            job_id
            for delivery in self._deliveries.stalled(silent_s)
            if (job_id := self._recover(delivery, silent_s, loss, max_attempts, now)) is not None
        ]
        if worker_ids is None:  # dead workers' registrations go too (a live one re-registers)
            self._deliveries.prune_workers(silent_s)
        return recovered

    def _recover(
        self, delivery: Delivery, silent_s: float, loss: RunLoss, max_attempts: int, now: float
    ) -> str | None:
        """Re-queue a stalled delivery's job, or fail it when out of attempts; its id if it was
        running."""
        ended: list[Ending] = []
        with self._tx() as db:
            row = db.execute(
                sa.select(jobs.c.id, jobs.c.status)
                .where(jobs.c.delivery_id == delivery.id)
                .with_for_update()
            ).first()
            stalled = db.execute(
                _STILL_STALLED, {"delivery": delivery.id, "silent_s": silent_s}
            ).first()
            if stalled is None:
                return None
            recovered = None
            status = None if row is None else JobStatus(row.status)
            if row is not None and status == JobStatus.IN_PROGRESS:
                recovered = str(row.id)
                status = self._recover_run(db, row.id, loss, max_attempts, now, ended)
        for ending in ended:
            ending.record()
        if status == JobStatus.IN_QUEUE:
            # Queued again (by us just now, or its worker died between taking the delivery and
            # starting the job): hand the delivery on.
            self._deliveries.hand_on(delivery, now)
        elif delivery.id is not None:
            # The job ended or went away (or we just failed it): its delivery is done too.
            self._deliveries.close_delivery(delivery.id, JobStatus.FAILED)
        return recovered
