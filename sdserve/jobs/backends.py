"""Opens the job store the settings name: embedded SQLite, or PostgreSQL with procrastinate."""

from __future__ import annotations

from sdserve.jobs.migrate import migrate
from sdserve.jobs.sqlite_store import SqliteJobStore, sqlite_engine
from sdserve.jobs.store import JobStore
from sdserve.settings import Settings


def open_job_store(settings: Settings, models: list[str] | None = None) -> JobStore:
    """`models`: the only models whose jobs this process's `claim` takes (None: all)."""
    if settings.database is None:
        return SqliteJobStore(settings.database_path, settings.result_ttl_s, models)
    from sdserve.jobs.pg_store import PostgresJobStore

    return PostgresJobStore(settings.database, settings.result_ttl_s, models)


def upgrade_database(settings: Settings) -> list[str]:
    """Bring the job database's schema up to date; return the revisions applied."""
    if settings.database is None:
        settings.database_path.parent.mkdir(parents=True, exist_ok=True)
        engine = sqlite_engine(settings.database_path, immediate=True)
    else:
        from sdserve.jobs.pg_store import postgres_engine

        engine = postgres_engine(settings.database)
    try:
        return migrate(engine)
    finally:
        engine.dispose()
