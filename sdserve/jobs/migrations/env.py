"""Alembic's entry point: runs on the connection `jobs.migrate` hands over, in its transaction."""

from __future__ import annotations

from alembic import context

from sdserve.jobs.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
