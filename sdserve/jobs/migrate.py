"""sdserve's schema, brought up to date by Alembic on SQLite and PostgreSQL alike.

Every process runs this when it opens the job store, so it must be safe to race: on PostgreSQL
an advisory lock, on SQLite the write lock its transaction takes at BEGIN, lets one process
apply the revisions while the others wait and then find nothing left to do.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

BASELINE = "0001"
"""The revision that is the schema of releases made before Alembic owned it."""
_SCRIPTS = "sdserve.jobs:migrations"
_LOCK = "sdserve-schema"
_LEGACY_TABLES = {"jobs", "sdserve_jobs"}
"""SQLite's and PostgreSQL's job table before Alembic: their presence means the baseline."""


def _config(db: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPTS)
    config.attributes["connection"] = db
    return config


def _is_legacy(db: sa.Connection, current: str | None) -> bool:
    """Whether the database was made by a release before Alembic owned the schema."""
    return current is None and bool(_LEGACY_TABLES & set(sa.inspect(db).get_table_names()))


def _pending(config: Config, current: str | None) -> list[str]:
    """The revisions a database at `current` still needs, oldest first."""
    script = ScriptDirectory.from_config(config)
    return [rev.revision for rev in reversed(list(script.iterate_revisions("head", current)))]


def migrate(engine: sa.Engine) -> list[str]:
    """Bring the schema up to date; return the revisions applied (empty when current)."""
    with engine.begin() as db:
        if db.dialect.name == "postgresql":
            db.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:lock))"), {"lock": _LOCK})
        config = _config(db)
        current = MigrationContext.configure(db).get_current_revision()
        if _is_legacy(db, current):
            command.stamp(config, BASELINE)  # made by a release before Alembic: its baseline
            current = BASELINE
        pending = _pending(config, current)
        if pending:
            command.upgrade(config, "head")
    if pending:
        log.info(
            "database schema upgraded from %s to revision %s", current or "nothing", pending[-1]
        )
    return pending
