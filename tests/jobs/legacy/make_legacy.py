"""Makes the legacy databases the upgrade tests start from, with sdserve 0.1's own store.

Run from a checkout of that release (commit 4fc8768), with PostgreSQL at hand:
    PYTHONPATH=<that checkout> python tests/jobs/legacy/make_legacy.py tests/jobs/legacy
It writes `v0.1-sqlite.sql` (the data folder's jobs.sqlite3, dumped) and `v0.1-postgresql.sql`
(`pg_dump --inserts` of a database, procrastinate's tables included).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdserve.jobs.pg_schema import upgrade

from sdserve.jobs.models import GenerationRequest, ImageResult, Job, JobPolicy, JobStatus
from sdserve.jobs.pg_store import PostgresJobStore
from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.jobs.store import JobStore
from tests.pg import fresh_database

NOW = 1_790_000_000.0


def _job(job_id: str, low_priority: bool = False) -> Job:
    request = GenerationRequest(
        model="default", prompt=f"prompt of {job_id}", width=128, height=128, guidance_scale=3,
        num_inference_steps=4, num_outputs=2, prompt_strength=0.8, scheduler="K-LMS", seed=7,
    )  # fmt: skip
    return Job(
        id=job_id, owner="alice", endpoint="default", request=request,
        input={"prompt": f"prompt of {job_id}"}, webhook="http://127.0.0.1:9/hook",
        policy=JobPolicy(low_priority=low_priority, ttl_ms=10**9), created_at=NOW,
    )  # fmt: skip


def fill(store: JobStore) -> None:
    """Six jobs, one in each state a running server leaves behind."""
    for job_id in ("running", "completed", "failed", "cancelled", "queued"):
        store.create(_job(job_id))
    store.create(_job("queued-low", low_priority=True))
    store.heartbeat("w1", None, time.time())
    for job_id in ("running", "completed", "failed"):
        job = store.claim("w1", time.time())
        assert job is not None and job.id == job_id
    store.add_progress("running", 1, 2, 4)
    outputs = [
        ImageResult(key="completed/0.png", seed=7),
        ImageResult(key="completed/1.png", seed=8),
    ]
    store.finish("completed", 1, JobStatus.COMPLETED, time.time(), outputs=outputs)
    store.finish("failed", 1, JobStatus.FAILED, time.time(), error="it broke")
    store.cancel("cancelled", time.time())


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.sqlite3"
        store = SqliteJobStore(path, default_ttl_s=1800)
        fill(store)
        store.close()
        dump = "\n".join(sqlite3.connect(path).iterdump())
        (out / "v0.1-sqlite.sql").write_text(dump + "\n")
    with fresh_database() as url:
        upgrade(url)
        pg = PostgresJobStore(url, default_ttl_s=1800)
        fill(pg)
        pg.close()
        sql = subprocess.run(
            ["pg_dump", "--inserts", "--no-owner", "--no-privileges", url],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        # psql's meta-commands (`\\restrict`) are not SQL: the test runs the file through psycopg.
        lines = [line for line in sql.splitlines() if not line.startswith("\\")]
        (out / "v0.1-postgresql.sql").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
