"""The job-state core: every transition written once, in SQL both SQLite and PostgreSQL run.

Statements are SQLAlchemy Core over the tables of `jobs/schema.py`, their WHERE clauses taken
from `jobs/transitions.py`. A backend adds only what really differs: its connections and how
jobs are delivered to workers (`claim`, and the delivery hooks that run after a transition
commits).
"""

from __future__ import annotations

import secrets
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from sdserve import metrics
from sdserve.canonical import ImageResult
from sdserve.jobs import outbox
from sdserve.jobs.losses import RunLoss, giving_up_message
from sdserve.jobs.models import (
    TIMED_OUT_ERROR,
    Job,
    JobStatus,
    Preview,
    ProgressEvent,
)
from sdserve.jobs.schema import idempotency as idempotency_keys
from sdserve.jobs.schema import jobs, workers
from sdserve.jobs.sql_reads import SqlJobReads
from sdserve.jobs.store import (
    IdempotencyKey,
    JobStore,
    KeyTaken,
    WebhookDelivery,
    job_from_row,
)
from sdserve.jobs.transitions import ENDINGS, TRANSITIONS, Op

NUMBERS = (2**32, 2**53)
"""Job numbers are drawn at random from this range: ModelsLab's integer ids cannot be guessed
or tell how many jobs others submit, and stay exact in JavaScript (below 2**53). Numbers of
sdserve 0.1 were sequential from 1, below it."""
_WORKER_ALIVE = sa.text(
    "INSERT INTO sdserve_workers (worker_id, heartbeat_at, job_id) VALUES (:worker, :now, :job)"
    " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = :now, job_id = :job"
)
# It does not differ between SQLite and PostgreSQL; upserts are the one thing SQLAlchemy Core
# only offers per dialect, so it is plain SQL both run.


def movable(op: Op) -> sa.ColumnElement[bool]:
    """The states `op` may move a job from."""
    return jobs.c.status.in_(TRANSITIONS[op].source_values)


def _ended(target: JobStatus, now: float) -> dict[str, Any]:
    """Column values of a job reaching a final state: its retention starts now."""
    return {
        "status": target.value,
        "finished_at": now,
        "expires_at": jobs.c.ttl_s + now,
        "heartbeat_at": None,
    }


class SqlJobStore(SqlJobReads, JobStore):
    """Job state in sdserve's tables, through a SQLAlchemy engine (its reads: `SqlJobReads`)."""

    def __init__(
        self,
        engine: sa.Engine,
        default_ttl_s: float,
        models: list[str] | None,
        reader: sa.Engine | None = None,
    ) -> None:
        """`models`: the only models whose jobs `claim` takes (None: every model). `reader`:
        an engine for read-only transactions, where the backend wants one apart."""
        self._engine = engine
        self._reader = reader or engine
        self._default_ttl_s = default_ttl_s
        self._models = models

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self._engine.begin() as db:
            yield db

    def close(self) -> None:
        self._engine.dispose()
        self._reader.dispose()

    # --- delivery hooks: run after the transition committed; nothing to do by default ----

    def _deliver(self, job_id: str, endpoint: str, low_priority: bool) -> None:
        """A job was queued (created or retried): hand it to whatever delivers jobs."""

    def _close_delivery(self, delivery_id: int | None, status: JobStatus) -> None:
        """A run ended with `status` (final, or re-queued elsewhere): its delivery is done."""

    def _drop_deliveries(self, delivery_ids: Sequence[int | None]) -> None:
        """Jobs were cancelled or purged: their deliveries must not run (any more)."""

    # --- submit ---------------------------------------------------------------------------

    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> int:
        for _ in range(3):  # a drawn number already taken: about one in 10**12 at 10**4 jobs
            number = secrets.randbelow(NUMBERS[1] - NUMBERS[0]) + NUMBERS[0]
            try:
                with self._tx() as db:
                    if idempotency is not None:
                        self._hold_key(db, job, idempotency)
                    db.execute(jobs.insert().values(number=number, **self._columns(job)))
                break
            except sa.exc.IntegrityError:
                if idempotency is not None and self.idempotent(job.owner, idempotency.key, 0):
                    raise KeyTaken(idempotency.key) from None
        else:
            raise RuntimeError("could not draw a free job number")
        try:
            self._deliver(job.id, job.endpoint, job.policy.low_priority)
        except BaseException:
            with self._tx() as db:  # never leave a job nobody will ever run
                db.execute(jobs.delete().where(jobs.c.id == job.id))
                db.execute(idempotency_keys.delete().where(idempotency_keys.c.job_id == job.id))
            raise
        metrics.job_submitted(job.endpoint)
        return number

    def _columns(self, job: Job) -> dict[str, Any]:
        ttl_s = job.policy.ttl_ms / 1000 if job.policy.ttl_ms else self._default_ttl_s
        timeout_ms = job.policy.execution_timeout_ms
        return {
            "id": job.id,
            "owner": job.owner,
            "endpoint": job.endpoint,
            "dialect": job.dialect,
            "extra": job.extra,
            "status": job.status.value,
            "request": job.request.model_dump(mode="json"),
            "input": job.input,
            "policy": job.policy.model_dump(mode="json"),
            "webhook": job.webhook,
            "created_at": job.created_at,
            "ttl_s": ttl_s,
            "timeout_s": timeout_ms / 1000 if timeout_ms else None,
            "low_priority": job.policy.low_priority,
            "batch_key": job.request.batch_key(),
            "warnings": job.warnings,
        }

    @staticmethod
    def _hold_key(db: sa.Connection, job: Job, idempotency: IdempotencyKey) -> None:
        """Record the key for this job; an expired record of the same key gives way."""
        table = idempotency_keys
        mine = (table.c.owner == job.owner, table.c.key == idempotency.key)
        db.execute(table.delete().where(*mine, table.c.expires_at <= job.created_at))
        db.execute(
            table.insert().values(
                owner=job.owner,
                key=idempotency.key,
                request_hash=idempotency.request_hash,
                job_id=job.id,
                expires_at=idempotency.expires_at,
            )
        )

    # --- runs -----------------------------------------------------------------------------

    def _start(
        self,
        db: sa.Connection,
        which: sa.ColumnElement[bool],
        worker_id: str,
        now: float,
        delivery_id: int | None = None,
    ) -> list[Job]:
        """CLAIM: start the next run of each queued job `which` selects (keeping their
        delivery unless `delivery_id` names the one that delivered them)."""
        delivered = {} if delivery_id is None else {"delivery_id": delivery_id}
        rows = db.execute(
            jobs.update()
            .where(which, movable(Op.CLAIM))
            .values(
                status=TRANSITIONS[Op.CLAIM].target,
                started_at=now,
                worker_id=worker_id,
                heartbeat_at=now,
                attempts=jobs.c.attempts + 1,
                progress_step=0,
                progress_total=0,
                **delivered,
            )
            .returning(*jobs.c)
        ).all()
        started = sorted((job_from_row(row._mapping) for row in rows), key=lambda j: j.created_at)
        for job in started:
            outbox.clear_events(db, job.id)
        if started:
            db.execute(
                workers.update()
                .where(workers.c.worker_id == worker_id)
                .values(job_id=started[0].id)
            )
        return started

    def claim_batch(self, worker_id: str, now: float, first: Job, limit: int) -> list[Job]:
        key = first.request.batch_key()
        if key is None or limit < 1:
            return []
        alike = sa.and_(
            movable(Op.CLAIM), jobs.c.endpoint == first.endpoint, jobs.c.batch_key == key
        )
        if not first.policy.low_priority:
            alike = sa.and_(alike, jobs.c.low_priority == sa.false())
        return self._claim_alike(alike, worker_id, now, limit)

    @abstractmethod
    def _claim_alike(
        self, alike: sa.ColumnElement[bool], worker_id: str, now: float, limit: int
    ) -> list[Job]:
        """Start up to `limit` of the queued jobs `alike` selects, oldest first (the backend's
        side of `claim_batch`)."""

    def heartbeat(self, worker_id: str, job_id: str | None, now: float) -> None:
        with self._tx() as db:
            db.execute(_WORKER_ALIVE, {"worker": worker_id, "now": now, "job": job_id})
            db.execute(
                jobs.update()
                .where(jobs.c.worker_id == worker_id, jobs.c.status == JobStatus.IN_PROGRESS.value)
                .values(heartbeat_at=now)
            )

    def remove_worker(self, worker_id: str) -> None:
        with self._tx() as db:
            db.execute(workers.delete().where(workers.c.worker_id == worker_id))

    def add_progress(self, job_id: str, attempt: int, step: int, total: int) -> JobStatus | None:
        with self._tx() as db:
            status = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.attempts == attempt)
                .values(progress_step=step, progress_total=total)
                .returning(jobs.c.status)
            ).scalar_one_or_none()
            if status == JobStatus.IN_PROGRESS:
                outbox.add_event(db, job_id, step, total)
        return None if status is None else JobStatus(status)

    def set_preview(self, job_id: str, attempt: int, preview: Preview) -> None:
        with self._tx() as db:
            running = db.execute(
                sa.select(jobs.c.id).where(
                    jobs.c.id == job_id,
                    jobs.c.attempts == attempt,
                    jobs.c.status == JobStatus.IN_PROGRESS,
                )
            ).first()
            if running is not None:
                outbox.put_preview(db, job_id, preview)

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        now: float,
        outputs: list[ImageResult] | None = None,
        error: str | None = None,
    ) -> bool:
        if status not in ENDINGS:
            raise ValueError(f"a worker cannot end a run as {status.value}")
        transition = TRANSITIONS[ENDINGS[status]]
        with self._tx() as db:
            row = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.attempts == attempt, movable(ENDINGS[status]))
                .values(
                    **_ended(status, now),
                    outputs=[o.model_dump() for o in outputs or []],
                    error=error,
                )
                .returning(jobs.c.webhook, jobs.c.delivery_id, jobs.c.endpoint, jobs.c.started_at)
            ).first()
            if row is not None:
                outbox.queue_webhook(db, job_id, row.webhook, transition, now)
        if row is None:
            self.release(job_id, attempt)
            return False
        metrics.Ending(row.endpoint, status.value, row.started_at, now).record()
        self._close_delivery(row.delivery_id, status)
        return True

    def release(self, job_id: str, attempt: int) -> None:
        """Nothing to free where jobs are not delivered (SQLite: workers query the table)."""

    # --- the owner's and the sweeper's transitions ----------------------------------------

    def cancel(self, job_id: str, now: float) -> Job | None:
        target = TRANSITIONS[Op.CANCEL].target
        assert target is not None
        with self._tx() as db:
            delivery = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, movable(Op.CANCEL))
                .values(**_ended(target, now))
                .returning(jobs.c.delivery_id, jobs.c.endpoint, jobs.c.started_at)
            ).first()
        if delivery is not None:
            metrics.Ending(delivery.endpoint, target.value, delivery.started_at, now).record()
            # Queued: it is never delivered. Running: its worker sees the new status (and, on
            # PostgreSQL, procrastinate's abort flag) at the next step.
            self._drop_deliveries([delivery.delivery_id])
        return self.get(job_id)

    def retry(self, job_id: str, now: float) -> bool:
        with self._tx() as db:
            row = db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, movable(Op.RETRY))
                .values(
                    status=TRANSITIONS[Op.RETRY].target,
                    created_at=now,
                    started_at=None,
                    finished_at=None,
                    expires_at=None,
                    error=None,
                    outputs=[],
                    worker_id=None,
                    heartbeat_at=None,
                    delivery_id=None,
                    deaths=0,
                    retried=jobs.c.retried + 1,
                    progress_step=0,
                    progress_total=0,
                )
                .returning(jobs.c.endpoint, jobs.c.low_priority)
            ).first()
        if row is None:
            return False
        self._deliver(job_id, row.endpoint, row.low_priority)
        return True

    def purge(self, owner: str, endpoint: str) -> int:
        with self._tx() as db:
            rows = self._delete(
                db, (jobs.c.owner == owner, jobs.c.endpoint == endpoint, movable(Op.PURGE))
            )
        self._drop_deliveries([row.delivery_id for row in rows])
        return len(rows)

    def _delete(
        self, db: sa.Connection, where: tuple[sa.ColumnElement[bool], ...]
    ) -> Sequence[sa.Row[Any]]:
        """Delete jobs with their progress events and pending webhooks; return their rows."""
        rows = db.execute(jobs.delete().where(*where).returning(*jobs.c)).all()
        outbox.forget(db, [row.id for row in rows])
        return rows

    def _recover_run(
        self,
        db: sa.Connection,
        job_id: str,
        loss: RunLoss,
        max_attempts: int,
        now: float,
        ended: list[metrics.Ending],
    ) -> JobStatus | None:
        """REQUEUE a run its worker did not finish, or GIVE_UP on the job when its worker died
        under it `max_attempts` times (added to `ended`, to record after commit); a `loss`
        that is not the worker's death (a restart) never gives up. The job's status afterwards
        (None if it was not running)."""
        row = db.execute(
            sa.select(jobs.c.deaths, jobs.c.webhook, jobs.c.endpoint, jobs.c.started_at).where(
                jobs.c.id == job_id, movable(Op.REQUEUE)
            )
        ).first()
        if row is None:
            return None
        deaths = row.deaths + 1 if loss.counted else row.deaths
        if deaths < max_attempts or not loss.counted:
            db.execute(
                jobs.update()
                .where(jobs.c.id == job_id, movable(Op.REQUEUE))
                .values(
                    status=TRANSITIONS[Op.REQUEUE].target,
                    started_at=None,
                    worker_id=None,
                    heartbeat_at=None,
                    deaths=deaths,
                )
            )
            return JobStatus.IN_QUEUE
        give_up = TRANSITIONS[Op.GIVE_UP]
        assert give_up.target is not None
        db.execute(
            jobs.update()
            .where(jobs.c.id == job_id, movable(Op.GIVE_UP))
            .values(
                **_ended(give_up.target, now),
                deaths=deaths,
                error=giving_up_message(deaths, loss),
            )
        )
        outbox.queue_webhook(db, job_id, row.webhook, give_up, now)
        ended.append(metrics.Ending(row.endpoint, give_up.target.value, row.started_at, now))
        return give_up.target

    def time_out_overdue(self, now: float) -> list[str]:
        transition = TRANSITIONS[Op.TIME_OUT]
        assert transition.target is not None
        with self._tx() as db:
            rows = db.execute(
                jobs.update()
                .where(
                    movable(Op.TIME_OUT),
                    jobs.c.timeout_s.is_not(None),
                    jobs.c.started_at + jobs.c.timeout_s < now,
                )
                .values(**_ended(transition.target, now), error=TIMED_OUT_ERROR)
                .returning(jobs.c.id, jobs.c.webhook, jobs.c.endpoint, jobs.c.started_at)
            ).all()
            for row in rows:
                outbox.queue_webhook(db, row.id, row.webhook, transition, now)
        for row in rows:
            metrics.Ending(row.endpoint, transition.target.value, row.started_at, now).record()
        return [row.id for row in rows]

    def delete_expired(self, now: float) -> list[Job]:
        with self._tx() as db:
            db.execute(idempotency_keys.delete().where(idempotency_keys.c.expires_at <= now))
            rows = self._delete(
                db, (movable(Op.EXPIRE), jobs.c.expires_at.is_not(None), jobs.c.expires_at < now)
            )
        return [job_from_row(row._mapping) for row in rows]

    # --- progress stream and webhook outbox -----------------------------------------------

    def read_stream(self, job_id: str) -> list[ProgressEvent]:
        # Most reads find nothing new (a finished job, a poll between steps): a read tells so
        # without queueing for the write lock.
        with self._read() as db:
            if not outbox.has_unread(db, job_id):
                return []
        with self._tx() as db:
            return outbox.take_events(db, job_id)

    def due_webhooks(self, now: float, limit: int) -> list[WebhookDelivery]:
        with self._tx() as db:
            return outbox.lease_webhooks(db, now, limit)

    def webhook_attempted(
        self, delivery_id: int, delivered: bool, next_at: float | None, error: str | None = None
    ) -> None:
        with self._tx() as db:
            outbox.webhook_attempted(db, delivery_id, delivered, next_at, error)
