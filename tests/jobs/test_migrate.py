"""Migrations: fresh databases get the one schema; sdserve 0.1's upgrade in place, jobs kept."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sdserve.jobs.losses import worker_died
from sdserve.jobs.migrate import migrate
from sdserve.jobs.models import JobStatus
from sdserve.jobs.pg_store import PostgresJobStore, postgres_engine
from sdserve.jobs.schema import metadata
from sdserve.jobs.sql_store import NUMBERS, SqlJobStore
from sdserve.jobs.sqlite_store import SqliteJobStore, sqlite_engine
from tests.pg import fresh_database

LEGACY = Path(__file__).parent / "legacy"
HEAD = "0007"


def upgrade_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "sdserve", "db", "upgrade", *options]


def sqlite_from_v01(path: Path) -> Path:
    """A data folder's jobs.sqlite3 exactly as sdserve 0.1 left it (six jobs)."""
    with sqlite3.connect(path) as db:
        db.executescript((LEGACY / "v0.1-sqlite.sql").read_text())
    return path


@pytest.fixture
def postgres_from_v01() -> Iterator[str]:
    """A database exactly as sdserve 0.1 left it: its tables, procrastinate's, six jobs."""
    with fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute((LEGACY / "v0.1-postgresql.sql").read_text().encode())
        yield url


def _sqlite_quirk(difference: object) -> bool:
    """SQLite reflects a column declared inline as `TEXT PRIMARY KEY` as nullable."""
    if not isinstance(difference, list) or len(difference) != 1:
        return False
    change = difference[0]
    return change[0] == "modify_nullable" and change[3] in metadata.tables[change[2]].primary_key


def schema_differences(engine: sa.Engine) -> list[object]:
    """What differs between the database's tables and `jobs/schema.py` (types aside: SQLite
    keeps the declared type names of tables made before)."""
    with engine.connect() as db:
        context = MigrationContext.configure(
            db,
            opts={
                "compare_type": False,
                "include_name": lambda name, kind, parent: (
                    kind != "table" or name.startswith("sdserve_")
                ),
            },
        )
        return [d for d in compare_metadata(context, metadata) if not _sqlite_quirk(d)]


def check_v01_jobs_survived(store: SqlJobStore) -> None:
    expected = {
        "running": JobStatus.IN_PROGRESS,
        "completed": JobStatus.COMPLETED,
        "failed": JobStatus.FAILED,
        "cancelled": JobStatus.CANCELLED,
        "queued": JobStatus.IN_QUEUE,
        "queued-low": JobStatus.IN_QUEUE,
    }
    assert store.statuses(list(expected)) == expected
    completed = store.get("completed")
    assert completed is not None and completed.number == 2
    assert [(o.key, o.seed) for o in completed.outputs] == [
        ("completed/0.png", 7),
        ("completed/1.png", 8),
    ]
    assert completed.request.prompt == "prompt of completed" and completed.request.num_outputs == 2
    failed = store.get("failed")
    assert failed is not None and failed.error == "it broke" and failed.webhook
    running = store.get("running")
    assert running is not None and (running.progress_step, running.progress_total) == (2, 4)
    # Webhooks queued before the upgrade are still delivered.
    due = store.due_webhooks(time.time(), 10)
    assert sorted(d.job_id for d in due) == ["completed", "failed"]
    # New numbers are drawn above 0.1's sequential ones; queued jobs run, normal before low.
    new = completed.model_copy(
        update={"id": "new", "status": JobStatus.IN_QUEUE, "outputs": [], "created_at": time.time()}
    )
    assert NUMBERS[0] <= store.create(new) < NUMBERS[1]
    store.heartbeat("w2", None, time.time())
    claimed = [store.claim("w2", time.time()) for _ in range(3)]
    assert [job.id if job else None for job in claimed] == ["queued", "new", "queued-low"]
    # The run 0.1's dead worker left behind is recovered.
    assert store.requeue_orphans(["w1"], 0.0, 3, time.time(), worker_died(-9)) == ["running"]
    assert store.statuses(["running"]) == {"running": JobStatus.IN_QUEUE}


def test_sqlite_data_folder_of_v01_upgrades_in_place(tmp_path: Path) -> None:
    path = sqlite_from_v01(tmp_path / "jobs.sqlite3")
    store = SqliteJobStore(path, default_ttl_s=1800)
    try:
        check_v01_jobs_survived(store)
    finally:
        store.close()
    assert schema_differences(sqlite_engine(path, immediate=False)) == []


def test_postgresql_database_of_v01_upgrades_in_place(postgres_from_v01: str) -> None:
    store = PostgresJobStore(postgres_from_v01, default_ttl_s=1800)
    try:
        check_v01_jobs_survived(store)
    finally:
        store.close()
    assert schema_differences(postgres_engine(postgres_from_v01)) == []


def test_fresh_databases_get_the_same_schema(tmp_path: Path) -> None:
    sqlite = sqlite_engine(tmp_path / "jobs.sqlite3", immediate=True)
    assert migrate(sqlite) == ["0001", "0002", "0003", "0004", "0005", "0006", HEAD]
    assert migrate(sqlite) == []
    assert schema_differences(sqlite) == []
    with fresh_database() as url:
        postgres = postgres_engine(url)
        assert migrate(postgres) == ["0001", "0002", "0003", "0004", "0005", "0006", HEAD]
        assert schema_differences(postgres) == []
        with postgres.connect() as db:
            tables = set(sa.inspect(db).get_table_names())
        assert {"procrastinate_jobs", "procrastinate_workers", "sdserve_jobs"} <= tables
        postgres.dispose()


def test_concurrent_upgrades_apply_the_schema_once() -> None:
    with fresh_database() as database:
        runs = [
            subprocess.Popen(
                upgrade_command("--database", database), stdout=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0, 0]
        # exactly one process applied the changes; the others waited and found nothing to do
        assert sum(f"sdserve schema revision {HEAD}" in out for out in outputs) == 1
        assert sum("the schema is up to date" in out for out in outputs) == 3
        with psycopg.connect(database) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row == (HEAD,)


def test_upgrade_command_upgrades_a_data_folder(tmp_path: Path) -> None:
    sqlite_from_v01(tmp_path / "jobs.sqlite3")
    run = subprocess.run(
        upgrade_command("--data-dir", str(tmp_path)), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"sdserve schema revision {r}" for r in ("0002", "0003", "0004", "0005", "0006", HEAD)
    ]
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM sdserve_jobs").fetchone() == (6,)


def test_upgrade_needs_a_postgresql_url() -> None:
    run = subprocess.run(
        upgrade_command("--database", "sqlite:///x.db"), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "database must be a postgresql:// URL" in run.stderr
