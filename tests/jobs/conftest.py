"""The job store of each backend, for the contract tests every backend must pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdserve.jobs.pg_store import PostgresJobStore
from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.jobs.store import JobStore
from tests.pg import clear, fresh_database

OpenStore = Callable[[list[str] | None], JobStore]
"""Opens another store on the same database, taking jobs of the given models only."""


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    if request.param == "sqlite":
        return lambda models: SqliteJobStore(tmp_path / "jobs.sqlite3", 1800, models)
    url = request.getfixturevalue("postgres")
    PostgresJobStore(url, 1800).close()  # the schema, before clearing it
    clear(url)
    return lambda models: PostgresJobStore(url, 1800, models)


@pytest.fixture
def store(open_store: OpenStore) -> Iterator[JobStore]:
    backend = open_store(None)
    yield backend
    backend.close()
