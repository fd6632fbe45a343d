"""What a job leaves for others to read: its progress events, its latest preview and its
webhook deliveries.

Statements on a connection, run inside the store's transactions, for both backends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from sdserve.jobs.models import Preview, ProgressEvent
from sdserve.jobs.schema import job_events, previews, webhooks
from sdserve.jobs.store import WebhookDelivery
from sdserve.jobs.transitions import Transition

WEBHOOK_LEASE_S = 60.0
"""A webhook being delivered is hidden this long from other deliverers (other API nodes)."""
_DELIVERY = (
    webhooks.c.id,
    webhooks.c.job_id,
    webhooks.c.url,
    webhooks.c.attempts,
    webhooks.c.event_id,
    webhooks.c.created_at,
    webhooks.c.failed_at,
    webhooks.c.last_error,
)


def add_event(db: sa.Connection, job_id: str, step: int, total: int) -> None:
    db.execute(job_events.insert().values(job_id=job_id, step=step, total=total))


def has_unread(db: sa.Connection, job_id: str) -> bool:
    """Whether the job has events not read before."""
    unread = sa.select(job_events.c.seq).where(
        job_events.c.job_id == job_id, sa.not_(job_events.c.read)
    )
    return db.execute(unread.limit(1)).first() is not None


def take_events(db: sa.Connection, job_id: str) -> list[ProgressEvent]:
    """The job's events not read before, oldest first; marks them read."""
    rows = db.execute(
        job_events.update()
        .where(job_events.c.job_id == job_id, sa.not_(job_events.c.read))
        .values(read=True)
        .returning(job_events.c.seq, job_events.c.step, job_events.c.total)
    ).all()
    ordered = sorted(rows, key=lambda row: int(row.seq))
    return [ProgressEvent(step=row.step, total=row.total) for row in ordered]


def put_preview(db: sa.Connection, job_id: str, preview: Preview) -> None:
    """Replace the job's preview (a delete and an insert: the same SQL on both backends)."""
    db.execute(previews.delete().where(previews.c.job_id == job_id))
    db.execute(
        previews.insert().values(
            job_id=job_id, step=preview.step, total=preview.total, image=preview.jpeg
        )
    )


def read_preview(db: sa.Connection, job_id: str) -> Preview | None:
    row = db.execute(
        sa.select(previews.c.step, previews.c.total, previews.c.image).where(
            previews.c.job_id == job_id
        )
    ).first()
    return None if row is None else Preview(step=row.step, total=row.total, jpeg=row.image)


def queue_webhook(
    db: sa.Connection, job_id: str, url: str | None, transition: Transition, now: float
) -> None:
    """Queue the job's webhook if it has one and `transition` is one it reports."""
    if url and transition.webhook:
        db.execute(
            webhooks.insert().values(
                job_id=job_id,
                url=url,
                next_at=now,
                event_id=f"msg_{uuid.uuid4().hex}",
                created_at=now,
            )
        )


def lease_webhooks(db: sa.Connection, now: float, limit: int) -> list[WebhookDelivery]:
    """Deliveries due now, hidden from other deliverers for `WEBHOOK_LEASE_S`."""
    due = (
        sa.select(webhooks.c.id)
        .where(webhooks.c.next_at <= now, webhooks.c.failed_at.is_(None))
        .order_by(webhooks.c.next_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = db.execute(
        webhooks.update()
        .where(webhooks.c.id.in_(due))
        .values(next_at=now + WEBHOOK_LEASE_S)
        .returning(*_DELIVERY)
    ).all()
    ordered = sorted(rows, key=lambda row: int(row.id))
    return [WebhookDelivery(**row._mapping) for row in ordered]


def webhook_attempted(
    db: sa.Connection,
    delivery_id: int,
    delivered: bool,
    next_at: float | None,
    error: str | None = None,
) -> None:
    which = webhooks.c.id == delivery_id
    if delivered:
        db.execute(webhooks.delete().where(which))
    elif next_at is None:
        db.execute(
            webhooks.update()
            .where(which)
            .values(attempts=webhooks.c.attempts + 1, failed_at=time.time(), last_error=error)
        )
    else:
        db.execute(
            webhooks.update()
            .where(which)
            .values(attempts=webhooks.c.attempts + 1, next_at=next_at, last_error=error)
        )


def webhook_log(db: sa.Connection, job_id: str) -> list[WebhookDelivery]:
    """The job's deliveries not yet delivered, pending or failed, oldest first."""
    rows = db.execute(
        sa.select(*_DELIVERY).where(webhooks.c.job_id == job_id).order_by(webhooks.c.id)
    ).all()
    return [WebhookDelivery(**row._mapping) for row in rows]


def clear_events(db: sa.Connection, job_id: str) -> None:
    """A new run starts: the last run's unread events go."""
    db.execute(job_events.delete().where(job_events.c.job_id == job_id))


def forget(db: sa.Connection, job_ids: Sequence[str]) -> None:
    """Deleted jobs: their events, previews and pending webhooks go too."""
    if job_ids:
        db.execute(job_events.delete().where(job_events.c.job_id.in_(job_ids)))
        db.execute(previews.delete().where(previews.c.job_id.in_(job_ids)))
        db.execute(webhooks.delete().where(webhooks.c.job_id.in_(job_ids)))
