"""The job store's reads: the queries that change nothing, in SQL both SQLite and PostgreSQL
run, on the backend's engine for read-only transactions (a writer's own unless it has one apart).
`SqlJobStore` (jobs/sql_store.py) writes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from sdserve.jobs import outbox
from sdserve.jobs.models import Job, JobCounts, JobStatus, Preview
from sdserve.jobs.schema import idempotency as idempotency_keys
from sdserve.jobs.schema import jobs, workers
from sdserve.jobs.store import WebhookDelivery, WorkerInfo, job_counts, job_from_row


class SqlJobReads:
    """What the store answers without writing."""

    _reader: sa.Engine

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._reader.begin() as db:
            yield db

    def idempotent(self, owner: str, key: str, now: float) -> tuple[str, str] | None:
        table = idempotency_keys
        query = sa.select(table.c.request_hash, table.c.job_id).where(
            table.c.owner == owner, table.c.key == key, table.c.expires_at > now
        )
        with self._read() as db:
            row = db.execute(query).first()
        return None if row is None else (row.request_hash, row.job_id)

    def get(self, job_id: str) -> Job | None:
        return self._one(jobs.c.id == job_id)

    def get_by_number(self, number: int) -> Job | None:
        return self._one(jobs.c.number == number)

    def _one(self, where: sa.ColumnElement[bool]) -> Job | None:
        with self._read() as db:
            row = db.execute(sa.select(jobs).where(where)).first()
        return None if row is None else job_from_row(row._mapping)

    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        with self._read() as db:
            rows = db.execute(sa.select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(job_ids)))
            return {row.id: JobStatus(row.status) for row in rows}

    def counts(self, endpoint: str, owner: str | None = None) -> JobCounts:
        query = (
            sa.select(
                jobs.c.status, sa.func.count(), sa.func.coalesce(sa.func.sum(jobs.c.retried), 0)
            )
            .where(jobs.c.endpoint == endpoint)
            .group_by(jobs.c.status)
        )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as db:
            rows = db.execute(query).all()
        return job_counts({row[0]: int(row[1]) for row in rows}, sum(int(r[2]) for r in rows))

    def active_by_model(self) -> dict[str, JobCounts]:
        active = (JobStatus.IN_QUEUE.value, JobStatus.IN_PROGRESS.value)
        query = (
            sa.select(jobs.c.endpoint, jobs.c.status, sa.func.count())
            .where(jobs.c.status.in_(active))
            .group_by(jobs.c.endpoint, jobs.c.status)
        )
        with self._read() as db:
            rows = db.execute(query).all()
        by_model: dict[str, dict[str, int]] = {}
        for endpoint, status, count in rows:
            by_model.setdefault(endpoint, {})[status] = int(count)
        return {model: job_counts(counts, 0) for model, counts in by_model.items()}

    def queued(self, endpoint: str | None = None, owner: str | None = None) -> int:
        query = sa.select(sa.func.count()).where(jobs.c.status == JobStatus.IN_QUEUE.value)
        if endpoint is not None:
            query = query.where(jobs.c.endpoint == endpoint)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as db:
            return int(db.execute(query).scalar_one())

    def attempt_status(self, job_id: str, attempt: int) -> JobStatus | None:
        query = sa.select(jobs.c.status).where(jobs.c.id == job_id, jobs.c.attempts == attempt)
        with self._read() as db:
            status = db.execute(query).scalar_one_or_none()
        return None if status is None else JobStatus(status)

    def workers(self, alive_since: float) -> list[WorkerInfo]:
        query = (
            sa.select(workers.c.worker_id, workers.c.heartbeat_at, workers.c.job_id)
            .where(workers.c.heartbeat_at >= alive_since)
            .order_by(workers.c.worker_id)
        )
        with self._read() as db:
            return [WorkerInfo(**row._mapping) for row in db.execute(query)]

    def preview(self, job_id: str) -> Preview | None:
        with self._read() as db:
            return outbox.read_preview(db, job_id)

    def webhook_log(self, job_id: str) -> list[WebhookDelivery]:
        with self._read() as db:
            return outbox.webhook_log(db, job_id)
