"""What only the PostgreSQL backend does: procrastinate's notifications wake idle workers, and
every API node sweeps for stalled runs at once without losing a job."""

from __future__ import annotations

import threading
import time

from sdserve.jobs.losses import worker_silent
from sdserve.jobs.models import JobStatus
from sdserve.jobs.pg_store import PostgresJobStore
from tests.jobs.helpers import make_job
from tests.pg import fresh_database


def test_an_idle_worker_wakes_when_a_job_is_queued_elsewhere() -> None:
    with fresh_database() as url:
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


def _sweep_together(nodes: list[PostgresJobStore]) -> None:
    """Every node's sweeper runs its stalled-run pass at the same moment (silent 0 s: every
    worker counts as silent)."""
    barrier = threading.Barrier(len(nodes))

    def sweep(node: PostgresJobStore) -> None:
        barrier.wait()
        now = time.time()
        node.requeue_orphans(None, now, 5, now, worker_silent(0))

    threads = [threading.Thread(target=sweep, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def test_api_nodes_recovering_the_same_stalled_run_at_once_lose_nothing() -> None:
    with fresh_database() as url:
        nodes = [PostgresJobStore(url, 1800) for _ in range(3)]
        worker = PostgresJobStore(url, 1800, models=["default"])
        try:
            for n in range(8):
                job_id = f"job{n}"
                nodes[0].create(make_job(job_id))
                started = worker.claim(f"dead{n}", time.time())
                assert started is not None and started.id == job_id
                _sweep_together(nodes)  # the worker "died": three sweepers race to recover
                assert nodes[1].statuses([job_id]) == {job_id: JobStatus.IN_QUEUE}
                rerun = worker.claim(f"alive{n}", time.time())
                assert rerun is not None and rerun.id == job_id and rerun.attempts == 2
                assert worker.finish(job_id, 2, JobStatus.COMPLETED, time.time(), [])
                assert nodes[2].statuses([job_id]) == {job_id: JobStatus.COMPLETED}
        finally:
            for store in [*nodes, worker]:
                store.close()


def test_a_worker_dying_between_taking_and_starting_a_job_loses_nothing() -> None:
    with fresh_database() as url:
        nodes = [PostgresJobStore(url, 1800) for _ in range(2)]
        worker = PostgresJobStore(url, 1800, models=["default"])
        try:
            nodes[0].create(make_job("a"))
            # The delivery is taken, and the worker dies before it marks the job started.
            assert worker._fetch("dead") is not None
            assert worker.claim("other", time.time()) is None  # delivered once only
            _sweep_together(nodes)
            job = worker.claim("alive", time.time())
            assert job is not None and job.id == "a" and job.attempts == 1
        finally:
            for store in [*nodes, worker]:
                store.close()
