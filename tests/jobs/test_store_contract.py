"""The JobStore contract: every backend must pass these (parametrise `store` over backends)."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from sdserve.canonical import ImageResult
from sdserve.jobs.losses import (
    SERVER_RESTARTED,
    SERVER_STOPPED,
    WORKER_STOPPED,
    worker_died,
    worker_silent,
)
from sdserve.jobs.models import Job, JobStatus, Preview
from sdserve.jobs.sql_store import NUMBERS
from sdserve.jobs.store import IdempotencyKey, JobStore, KeyTaken
from tests.jobs.conftest import OpenStore
from tests.jobs.helpers import make_job

KILLED = worker_died(-9)
SILENT = worker_silent(30)


def test_create_get_round_trip(store: JobStore) -> None:
    job = make_job("a", execution_timeout_ms=5000, ttl_ms=2000, low_priority=True)
    job = job.model_copy(update={"dialect": "modelslab", "extra": {"track_id": 7}})
    number = store.create(job)
    got = store.get("a")
    assert got is not None
    assert got.number == number and got.dialect == "modelslab" and got.extra == {"track_id": 7}
    assert store.get_by_number(number) == got
    assert got.request == job.request and got.policy == job.policy and got.input == job.input
    assert got.status == JobStatus.IN_QUEUE and got.attempts == 0
    assert store.get("missing") is None


def test_numbers_are_random_unique_and_never_reused(store: JobStore) -> None:
    first = store.create(make_job("a", ttl_ms=1000))
    store.claim("w", 100.0)
    store.finish("a", 1, JobStatus.COMPLETED, 100.0)
    store.delete_expired(200.0)
    assert store.get_by_number(first) is None
    numbers = [first] + [store.create(make_job(f"j{i}")) for i in range(20)]
    assert len(set(numbers)) == 21 and all(NUMBERS[0] <= n < NUMBERS[1] for n in numbers)
    # Not handed out in sequence: the next number tells nothing about the last one.
    assert sorted(numbers) != numbers or max(numbers) - min(numbers) > 10**6


def test_an_idempotency_key_holds_one_job(store: JobStore) -> None:
    now = time.time()
    key = IdempotencyKey(key="k1", request_hash="h1", expires_at=now + 60)
    store.create(make_job("a"), key)
    assert store.idempotent("alice", "k1", now) == ("h1", "a")
    assert store.idempotent("bob", "k1", now) is None  # keys are per owner
    with pytest.raises(KeyTaken):
        store.create(make_job("b"), key.model_copy(update={"request_hash": "h2"}))
    assert store.get("b") is None  # nothing was created
    store.create(make_job("c", owner="bob"), key)  # another owner's key of the same name
    # Expired: not found, and a new submission may take the key.
    assert store.idempotent("alice", "k1", now + 61) is None
    later = make_job("d").model_copy(update={"created_at": now + 61})
    store.create(later, IdempotencyKey(key="k1", request_hash="h3", expires_at=now + 120))
    assert store.idempotent("alice", "k1", now + 62) == ("h3", "d")
    store.delete_expired(now + 121)
    assert store.idempotent("alice", "k1", 0) is None and store.idempotent("bob", "k1", 0) is None


def test_counts_and_queued_per_owner(store: JobStore) -> None:
    store.create(make_job("a1"))
    store.create(make_job("a2", endpoint="other"))
    store.create(make_job("b1", owner="bob"))
    assert store.queued() == 3 and store.queued("default") == 2
    assert store.queued(owner="alice") == 2 and store.queued("default", "alice") == 1
    assert store.counts("default").in_queue == 2
    assert store.counts("default", "bob").in_queue == 1
    assert store.counts("default", "carol").in_queue == 0


def test_claim_order_normal_before_low_priority_then_fifo(store: JobStore) -> None:
    store.create(make_job("low", low_priority=True))
    store.create(make_job("first"))
    store.create(make_job("second"))
    claimed = [store.claim("w", time.time()) for _ in range(4)]
    assert [j.id if j else None for j in claimed] == ["first", "second", "low", None]
    assert all(j.status == JobStatus.IN_PROGRESS and j.attempts == 1 for j in claimed if j)


def _like(job_id: str, low_priority: bool = False, **request: object) -> Job:
    job = make_job(job_id, low_priority=low_priority)
    return job.model_copy(update={"request": job.request.model_copy(update=request)})


def test_a_batch_takes_only_queued_jobs_that_share_the_call(store: JobStore) -> None:
    store.create(_like("first", prompt="a cat"))
    store.create(_like("low", True))  # same call, but low priority: never slows normal ones
    store.create(_like("steps", num_inference_steps=3))
    store.create(_like("img2img", init_image=b"png"))
    store.create(_like("other", model="other"))
    store.create(_like("two images", num_outputs=2))  # a batch's jobs have as many images
    for job_id in ("alike1", "cancelled", "alike2", "alike3"):
        store.create(_like(job_id, prompt=f"{job_id} prompt", seed=9))
    store.cancel("cancelled", time.time())
    first = store.claim("w", time.time())
    assert first is not None and first.id == "first"

    batch = store.claim_batch("w", time.time(), first, 2)
    assert [j.id for j in batch] == ["alike1", "alike2"]  # oldest first, up to the limit
    assert all(j.status == JobStatus.IN_PROGRESS and j.attempts == 1 for j in batch)
    assert all(j.worker_id == "w" for j in batch)
    assert [j.id for j in store.claim_batch("w2", time.time(), first, 8)] == ["alike3"]
    assert store.claim_batch("w", time.time(), first, 8) == []
    # A job that batches with none takes no companions.
    img2img = store.get("img2img")
    assert img2img is not None and store.claim_batch("w", time.time(), img2img, 8) == []
    # What is left is claimed one by one in the usual order; a low-priority first job takes
    # companions of any priority.
    rest = [store.claim("w", time.time()) for _ in range(4)]
    assert [j.id if j else None for j in rest] == ["steps", "img2img", "other", "two images"]
    low = store.claim("w", time.time())
    assert low is not None and low.id == "low"
    store.create(_like("later"))
    assert [j.id for j in store.claim_batch("w", time.time(), low, 8)] == ["later"]
    for job in [first, *batch]:
        assert store.finish(job.id, 1, JobStatus.COMPLETED, time.time())


def test_finish_sets_outputs_expiry_and_webhook(store: JobStore) -> None:
    store.create(make_job("a", ttl_ms=60_000))
    job = store.claim("w", time.time())
    assert job is not None
    now = time.time()
    outputs = [ImageResult(key="a/0.png", seed=1)]
    assert store.finish("a", 1, JobStatus.COMPLETED, now, outputs=outputs)
    got = store.get("a")
    assert got is not None and got.status == JobStatus.COMPLETED and got.outputs == outputs
    assert got.expires_at == pytest.approx(now + 60)
    [delivery] = store.due_webhooks(now + 1, 10)
    assert delivery.job_id == "a"
    store.webhook_attempted(delivery.id, False, now + 100)
    assert store.due_webhooks(now + 1, 10) == []
    assert store.due_webhooks(now + 101, 10)[0].attempts == 1


def test_a_webhook_out_of_retries_is_kept_failed_and_a_delivered_one_goes(
    store: JobStore,
) -> None:
    for job_id in ("a", "b"):
        store.create(make_job(job_id))
        store.claim("w", time.time())
        store.finish(job_id, 1, JobStatus.FAILED, time.time(), error="x")
    first, second = store.due_webhooks(time.time(), 10)
    assert first.event_id.startswith("msg_") and first.event_id != second.event_id
    store.webhook_attempted(first.id, False, None, "HTTP 503")
    store.webhook_attempted(second.id, True, None)
    assert store.due_webhooks(time.time() + 10**6, 10) == []
    [kept] = store.webhook_log(first.job_id)
    assert kept.failed_at is not None and kept.last_error == "HTTP 503" and kept.attempts == 1
    assert store.webhook_log(second.job_id) == []


def test_finish_of_a_stale_attempt_is_refused(store: JobStore) -> None:
    store.create(make_job("a"))
    store.claim("w1", time.time())
    store.requeue_orphans(["w1"], 0, max_attempts=3, now=time.time(), loss=KILLED)
    store.claim("w2", time.time())
    assert not store.finish("a", 1, JobStatus.COMPLETED, time.time())
    assert store.finish("a", 2, JobStatus.COMPLETED, time.time())


def test_cancel_wins_over_a_late_finish(store: JobStore) -> None:
    store.create(make_job("a"))
    store.claim("w", time.time())
    cancelled = store.cancel("a", time.time())
    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
    assert store.add_progress("a", 1, 1, 2) == JobStatus.CANCELLED
    assert not store.finish("a", 1, JobStatus.COMPLETED, time.time())


def test_orphans_requeue_until_attempts_run_out(store: JobStore) -> None:
    store.create(make_job("a"))
    for attempt in (1, 2, 3):
        job = store.claim("w", time.time())
        assert job is not None and job.attempts == attempt
        store.requeue_orphans(["w"], 0, max_attempts=3, now=time.time(), loss=KILLED)
    got = store.get("a")
    assert got is not None and got.status == JobStatus.FAILED
    assert got.error == (
        "the worker running this job died 3 times (the last time it was killed by SIGKILL,"
        " as the system's out-of-memory killer does); giving up: the request may need more"
        " memory or time than the worker has"
    )


def test_restarts_requeue_without_using_up_attempts(store: JobStore) -> None:
    store.create(make_job("a"))
    for stop in (SERVER_RESTARTED, SERVER_STOPPED, WORKER_STOPPED, SERVER_RESTARTED):
        assert store.claim("w", time.time()) is not None
        assert store.requeue_orphans(["w"], 0, max_attempts=1, now=time.time(), loss=stop) == ["a"]
        assert store.statuses(["a"]) == {"a": JobStatus.IN_QUEUE}
    # Each run has its own number still, so a stale run's writes are refused...
    job = store.claim("w", time.time())
    assert job is not None and job.attempts == 5
    assert not store.finish("a", 4, JobStatus.COMPLETED, time.time())
    # ...and only the worker's death uses up the one attempt.
    store.requeue_orphans(["w"], 0, max_attempts=1, now=time.time(), loss=worker_died(1))
    got = store.get("a")
    assert got is not None and got.status == JobStatus.FAILED and got.error is not None
    assert got.error.startswith(
        "the worker running this job died once (the last time it exited with code 1)"
    )


def test_a_retried_job_starts_with_all_its_attempts_and_a_new_run_number(
    store: JobStore,
) -> None:
    store.create(make_job("a"))
    store.claim("w", time.time())
    store.requeue_orphans(["w"], 0, max_attempts=1, now=time.time(), loss=KILLED)
    assert store.retry("a", time.time())
    job = store.claim("w2", time.time())
    assert job is not None and job.attempts == 2
    assert not store.finish("a", 1, JobStatus.COMPLETED, time.time())  # the first run's
    store.requeue_orphans(["w2"], 0, max_attempts=2, now=time.time(), loss=KILLED)
    assert store.statuses(["a"]) == {"a": JobStatus.IN_QUEUE}


def test_stale_heartbeat_requeues(store: JobStore) -> None:
    store.create(make_job("a"))
    store.claim("w", time.time())
    store.heartbeat("w", "a", time.time())
    assert store.requeue_orphans(None, time.time() - 30, 3, time.time(), SILENT) == []
    time.sleep(1.5)  # the worker falls silent
    assert store.requeue_orphans(None, time.time() - 1, 3, time.time(), SILENT) == ["a"]
    job = store.claim("w2", time.time())
    assert job is not None and job.id == "a" and job.attempts == 2


def test_a_store_opened_for_some_models_claims_only_theirs(
    store: JobStore, open_store: OpenStore
) -> None:
    store.create(make_job("x", endpoint="other"))
    store.create(make_job("a"))
    picky = open_store(["default"])
    try:
        job = picky.claim("w", time.time())
        assert job is not None and job.id == "a"
        assert picky.claim("w", time.time()) is None
    finally:
        picky.close()
    job = store.claim("w2", time.time())
    assert job is not None and job.id == "x"


def test_cancelled_queued_job_is_never_delivered(store: JobStore) -> None:
    store.create(make_job("a"))
    store.create(make_job("b"))
    store.cancel("a", time.time())
    job = store.claim("w", time.time())
    assert job is not None and job.id == "b"
    assert store.claim("w", time.time()) is None


def test_release_after_cancel_then_requeue_keeps_deliveries_apart(store: JobStore) -> None:
    store.create(make_job("a"))
    store.claim("w", time.time())
    store.cancel("a", time.time())
    store.release("a", 1)
    assert store.claim("w", time.time()) is None
    store.create(make_job("b"))
    store.claim("w", time.time())
    store.requeue_orphans(["w"], 0, max_attempts=3, now=time.time(), loss=KILLED)
    store.release("b", 1)  # the stale run lets go: the re-queued job must still be delivered
    job = store.claim("w2", time.time())
    assert job is not None and job.id == "b" and job.attempts == 2


def test_timeout_retry_and_expiry(store: JobStore) -> None:
    store.create(make_job("a", execution_timeout_ms=1000, ttl_ms=1000))
    store.claim("w", 100.0)
    assert store.time_out_overdue(100.5) == []
    assert store.time_out_overdue(101.5) == ["a"]
    assert store.retry("a", 102.0)
    assert not store.retry("a", 102.0)  # queued now: not retryable
    store.claim("w", 103.0)
    # The timed-out run may still be going: its writes name run 1, the retry's run is 2.
    assert not store.finish("a", 1, JobStatus.COMPLETED, 104.0)
    assert store.finish("a", 2, JobStatus.COMPLETED, 104.0)
    assert store.delete_expired(104.5) == []
    assert [j.id for j in store.delete_expired(105.5)] == ["a"]
    assert store.get("a") is None


def test_purge_counts_and_stream(store: JobStore) -> None:
    for job_id, owner in [("a", "alice"), ("b", "alice"), ("c", "bob")]:
        store.create(make_job(job_id, owner=owner))
    store.claim("w", time.time())  # "a" runs
    assert store.purge("alice", "default") == 1
    counts = store.counts("default")
    assert (counts.in_queue, counts.in_progress) == (1, 1)
    assert store.queued("default") == 1
    store.add_progress("a", 1, 1, 4)
    store.add_progress("a", 1, 2, 4)
    assert [(e.step, e.total) for e in store.read_stream("a")] == [(1, 4), (2, 4)]
    assert store.read_stream("a") == []


def test_a_preview_is_kept_for_the_running_attempt_only_and_goes_with_its_job(
    store: JobStore,
) -> None:
    store.create(make_job("a"))
    early = Preview(step=1, total=4, jpeg=b"one")
    store.set_preview("a", 1, early)
    assert store.preview("a") is None  # queued: no run to preview
    store.claim("w", time.time())
    store.set_preview("a", 1, early)
    store.set_preview("a", 1, Preview(step=2, total=4, jpeg=b"two"))
    store.set_preview("a", 0, Preview(step=3, total=4, jpeg=b"stale"))  # an older run's
    assert store.preview("a") == Preview(step=2, total=4, jpeg=b"two")
    store.finish("a", 1, JobStatus.COMPLETED, time.time())
    store.set_preview("a", 1, Preview(step=4, total=4, jpeg=b"late"))  # after the end
    assert store.preview("a") == Preview(step=2, total=4, jpeg=b"two")
    assert store.delete_expired(time.time() + 10**6)
    assert store.preview("a") is None


def test_workers_by_heartbeat(store: JobStore) -> None:
    store.heartbeat("w1", None, 100.0)
    store.heartbeat("w2", "x", 200.0)
    assert {w.worker_id for w in store.workers(alive_since=150.0)} == {"w2"}
    store.remove_worker("w2")
    assert [w.worker_id for w in store.workers(alive_since=0)] == ["w1"]


def test_active_jobs_by_model(store: JobStore) -> None:
    for job_id, endpoint in [("a", "default"), ("b", "default"), ("c", "other")]:
        store.create(make_job(job_id, endpoint=endpoint))
    store.claim("w", time.time())  # "a" runs

    def active() -> dict[str, tuple[int, int]]:
        return {m: (c.in_queue, c.in_progress) for m, c in store.active_by_model().items()}

    assert active() == {"default": (1, 1), "other": (1, 0)}
    store.finish("a", 1, JobStatus.COMPLETED, time.time())
    store.cancel("c", time.time())
    assert active() == {"default": (1, 0)}


def _finished(state: str) -> tuple[float, float]:
    """How many jobs of model `m` ended in `state`, and how many of those had run."""
    labels = {"model": "m", "state": state}
    ended = REGISTRY.get_sample_value("sdserve_jobs_finished_total", labels) or 0.0
    runs = REGISTRY.get_sample_value("sdserve_job_execution_seconds_count", labels) or 0.0
    return ended, runs


def test_each_final_state_is_counted_once_by_the_process_that_commits_it(
    store: JobStore,
) -> None:
    states = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
    before = {state: _finished(state) for state in states}
    now = time.time()
    store.create(make_job("done", endpoint="m"))
    store.claim("w", now)
    assert store.finish("done", 1, JobStatus.COMPLETED, now + 2)
    assert not store.finish("done", 1, JobStatus.COMPLETED, now + 3)  # not counted twice
    store.create(make_job("queued", endpoint="m"))
    store.cancel("queued", now)  # never ran: counted, with no run time
    store.create(make_job("slow", endpoint="m", execution_timeout_ms=1000))
    store.claim("w", now)
    assert store.time_out_overdue(now + 10) == ["slow"]
    store.create(make_job("dies", endpoint="m"))
    store.claim("w", now)
    store.requeue_orphans(["w"], 0, max_attempts=1, now=now + 1, loss=KILLED)  # given up: FAILED
    after = {state: _finished(state) for state in states}
    added = {s: (after[s][0] - before[s][0], after[s][1] - before[s][1]) for s in states}
    assert added == {
        "COMPLETED": (1, 1),
        "FAILED": (1, 1),
        "CANCELLED": (1, 0),
        "TIMED_OUT": (1, 1),
    }
