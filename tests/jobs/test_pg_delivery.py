"""What only the PostgreSQL backend does: procrastinate's notifications wake idle workers."""

from __future__ import annotations

import threading
import time

from sdserve.jobs.pg_schema import upgrade
from sdserve.jobs.pg_store import PostgresJobStore
from tests.jobs.test_store_contract import make_job
from tests.pg import fresh_database


def test_an_idle_worker_wakes_when_a_job_is_queued_elsewhere() -> None:
    with fresh_database() as url:
        upgrade(url)
        worker_side = PostgresJobStore(url, 1800, models=["default"])
        api_side = PostgresJobStore(url, 1800)
        try:
            worker_side.wait_for_jobs(0.5)  # starts listening; nothing queued yet
            woke: list[float] = []

            def idle_worker() -> None:
                worker_side.wait_for_jobs(60)
                woke.append(time.monotonic())

            thread = threading.Thread(target=idle_worker)
            thread.start()
            time.sleep(0.5)
            queued = time.monotonic()
            api_side.create(make_job("a"))
            thread.join(timeout=30)
            assert woke and woke[0] - queued < 30  # woken by the job, not by the 60 s timeout
            job = worker_side.claim("w", time.time())
            assert job is not None and job.id == "a"
        finally:
            worker_side.close()
            api_side.close()
