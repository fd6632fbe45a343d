"""Fixtures: a job store and image folder for running jobs the way a worker does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.storage.local import LocalImageStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteJobStore]:
    backend = SqliteJobStore(tmp_path / "jobs.sqlite3", default_ttl_s=1800)
    yield backend
    backend.close()


@pytest.fixture
def images(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "images")
