"""Throwaway PostgreSQL databases for tests, on the server every dev and CI machine runs.

PostgreSQL being unreachable is an error, never a skip: the shared-mode tests must not
pass by not running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get("SDSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database for the duration; dropped afterwards, connections and all."""
    name = f"sdserve_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); the shared-mode tests need it"
            " (set SDSERVE_TEST_POSTGRES to another server)"
        ) from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clear(url: str) -> None:
    """Empty every job table of a database made by `fresh_database` (schema kept)."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "TRUNCATE sdserve_jobs, sdserve_job_events, sdserve_webhooks, sdserve_workers,"
            " procrastinate_jobs, procrastinate_workers CASCADE"
        )
