"""`sdserve db upgrade`: one command, safe when several nodes run it at the same moment."""

from __future__ import annotations

import subprocess
import sys

import psycopg

from sdserve.jobs.pg_schema import MIGRATIONS
from tests.pg import fresh_database


def upgrade_command(database: str) -> list[str]:
    return [sys.executable, "-m", "sdserve", "db", "upgrade", "--database", database]


def test_concurrent_upgrades_apply_the_schema_once() -> None:
    with fresh_database() as database:
        runs = [
            subprocess.Popen(upgrade_command(database), stdout=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0, 0]
        # exactly one process applied the changes; the others waited and found nothing to do
        assert sum("sdserve schema 1" in out for out in outputs) == 1
        assert sum("the schema is up to date" in out for out in outputs) == 3
        with psycopg.connect(database) as db:
            meta = dict(db.execute("SELECT key, value FROM sdserve_meta").fetchall())
            tables = {
                row[0]
                for row in db.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            }
        assert meta["schema"] == str(len(MIGRATIONS))
        assert {"sdserve_jobs", "procrastinate_jobs", "procrastinate_workers"} <= tables
        again = subprocess.run(upgrade_command(database), capture_output=True, text=True)
        assert again.returncode == 0 and "up to date" in again.stdout


def test_upgrade_needs_a_postgresql_url() -> None:
    run = subprocess.run(
        [*upgrade_command("sqlite:///x.db")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "database must be a postgresql:// URL" in run.stderr
