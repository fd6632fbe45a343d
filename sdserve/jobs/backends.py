"""Opens the job store the settings name: embedded SQLite, or PostgreSQL with procrastinate."""

from __future__ import annotations

from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.jobs.store import JobStore
from sdserve.settings import Settings


def open_job_store(settings: Settings, models: list[str] | None = None) -> JobStore:
    """`models`: the only models whose jobs this process's `claim` takes (None: all)."""
    if settings.database is None:
        return SqliteJobStore(settings.database_path, settings.result_ttl_s, models)
    from sdserve.jobs.pg_schema import upgrade
    from sdserve.jobs.pg_store import PostgresJobStore

    upgrade(settings.database)  # every node at start; the schema lock makes that safe
    return PostgresJobStore(settings.database, settings.result_ttl_s, models)
