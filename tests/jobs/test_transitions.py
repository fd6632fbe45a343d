"""Every operation from every state, on both backends, ends as the transition table says."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sdserve.jobs.losses import worker_died
from sdserve.jobs.models import JobStatus
from sdserve.jobs.store import JobStore
from sdserve.jobs.transitions import TRANSITIONS, Op
from tests.jobs.helpers import make_job

WORKER = "w"


def _claimed(store: JobStore, job_id: str) -> None:
    store.heartbeat(WORKER, None, time.time())
    job = store.claim(WORKER, time.time())
    assert job is not None and job.id == job_id


def put_in(store: JobStore, job_id: str, status: JobStatus) -> None:
    """Create a job and bring it to `status` the way a server does."""
    store.create(make_job(job_id))
    if status == JobStatus.CANCELLED:
        store.cancel(job_id, time.time())
    elif status != JobStatus.IN_QUEUE:
        _claimed(store, job_id)
        if status != JobStatus.IN_PROGRESS:
            assert store.finish(job_id, 1, status, time.time(), error="x")


def _ending(status: JobStatus) -> Callable[[JobStore, str], object]:
    return lambda store, job_id: store.finish(job_id, 1, status, time.time())


def _requeue(max_attempts: int) -> Callable[[JobStore, str], object]:
    return lambda store, job_id: store.requeue_orphans(
        [WORKER], 0.0, max_attempts, time.time(), worker_died(-9)
    )


OPERATIONS: dict[Op, Callable[[JobStore, str], object]] = {
    Op.CLAIM: lambda store, job_id: store.claim("w2", time.time()),
    Op.COMPLETE: _ending(JobStatus.COMPLETED),
    Op.FAIL: _ending(JobStatus.FAILED),
    Op.TIME_OUT: _ending(JobStatus.TIMED_OUT),
    Op.CANCEL: lambda store, job_id: store.cancel(job_id, time.time()),
    Op.RETRY: lambda store, job_id: store.retry(job_id, time.time()),
    Op.REQUEUE: _requeue(max_attempts=3),
    Op.GIVE_UP: _requeue(max_attempts=1),
    Op.PURGE: lambda store, job_id: store.purge("alice", "default"),
    Op.EXPIRE: lambda store, job_id: store.delete_expired(time.time() + 10**7),
}


def test_every_operation_has_a_transition() -> None:
    assert set(OPERATIONS) == set(TRANSITIONS) == set(Op)


@pytest.mark.parametrize("status", list(JobStatus))
def test_operations_follow_the_table(store: JobStore, status: JobStatus) -> None:
    for op, operate in OPERATIONS.items():
        job_id = f"{status.value}-{op.value}"
        put_in(store, job_id, status)
        operate(store, job_id)
        transition = TRANSITIONS[op]
        expected = transition.target if status in transition.sources else status
        after = store.get(job_id)
        assert (after.status if after else None) == expected, f"{op.value} from {status.value}"
        # Leave nothing claimable or running behind for the next operation.
        store.cancel(job_id, time.time())
        store.purge("alice", "default")
