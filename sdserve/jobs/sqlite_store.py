"""The embedded job store: one SQLite file in WAL mode, shared by the API and worker processes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from sdserve.jobs.losses import RunLoss
from sdserve.jobs.migrate import migrate
from sdserve.jobs.models import Job
from sdserve.jobs.schema import jobs
from sdserve.jobs.sql_store import SqlJobStore, movable
from sdserve.jobs.transitions import Op
from sdserve.metrics import Ending


def sqlite_engine(path: Path, *, immediate: bool) -> sa.Engine:
    """An engine on the file; `immediate`: its transactions take the write lock at BEGIN, so
    concurrent writers queue up instead of failing to upgrade a read lock."""
    engine = sa.create_engine(
        sa.URL.create("sqlite", database=str(path)),
        connect_args={"timeout": 30.0, "check_same_thread": False},
        # Connections kept open for the API's threads (40 run handlers at once): past the
        # pool, each request opened a file connection and set its pragmas, then closed it.
        pool_size=48,
    )
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @sa.event.listens_for(engine, "connect")
    def _connected(db: sqlite3.Connection, _record: object) -> None:
        db.isolation_level = None  # sqlite3's own implicit transactions off: SQLAlchemy's rule
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")

    @sa.event.listens_for(engine, "begin")
    def _began(connection: sa.Connection) -> None:
        connection.exec_driver_sql(begin)

    return engine


class SqliteJobStore(SqlJobStore):
    """Jobs in a SQLite file; a job's row is its own queue entry."""

    def __init__(self, path: Path, default_ttl_s: float, models: list[str] | None = None) -> None:
        """`models`: the only models whose jobs `claim` takes (None: every model)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sqlite_engine(path, immediate=True)
        migrate(engine)  # every process at start: the write lock serialises them
        super().__init__(engine, default_ttl_s, models, reader=sqlite_engine(path, immediate=False))

    def claim(self, worker_id: str, now: float) -> Job | None:
        queued = sa.select(jobs.c.id).where(movable(Op.CLAIM))
        if self._models is not None:
            queued = queued.where(jobs.c.endpoint.in_(self._models))
        first = queued.order_by(jobs.c.low_priority, jobs.c.created_at).limit(1)
        with self._tx() as db:
            started = self._start(db, jobs.c.id == first.scalar_subquery(), worker_id, now)
        return started[0] if started else None

    def _claim_alike(
        self, alike: sa.ColumnElement[bool], worker_id: str, now: float, limit: int
    ) -> list[Job]:
        oldest = sa.select(jobs.c.id).where(alike).order_by(jobs.c.created_at).limit(limit)
        with self._tx() as db:
            return self._start(db, jobs.c.id.in_(oldest.scalar_subquery()), worker_id, now)

    def requeue_orphans(
        self,
        worker_ids: list[str] | None,
        stale_before: float,
        max_attempts: int,
        now: float,
        loss: RunLoss,
    ) -> list[str]:
        dead = (
            jobs.c.heartbeat_at < stale_before
            if worker_ids is None
            else jobs.c.worker_id.in_(worker_ids)
        )
        ended: list[Ending] = []
        with self._tx() as db:
            ids = list(db.execute(sa.select(jobs.c.id).where(movable(Op.REQUEUE), dead)).scalars())
            for job_id in ids:
                self._recover_run(db, job_id, loss, max_attempts, now, ended)
        for ending in ended:
            ending.record()
        return ids
