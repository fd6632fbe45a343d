"""The job store interface: every backend (SQLite, PostgreSQL) passes the same contract tests."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from sdserve.canonical import GenerationRequest, ImageResult
from sdserve.jobs.losses import RunLoss
from sdserve.jobs.models import Job, JobCounts, JobPolicy, JobStatus, Preview, ProgressEvent


def job_from_row(row: Mapping[Any, Any]) -> Job:
    """A job from a row of `sdserve_jobs`, its JSON columns decoded."""
    return Job(
        id=row["id"],
        number=row["number"],
        owner=row["owner"],
        endpoint=row["endpoint"],
        dialect=row["dialect"],
        extra=row["extra"],
        request=GenerationRequest.model_validate(row["request"]),
        input=row["input"],
        status=JobStatus(row["status"]),
        policy=JobPolicy.model_validate(row["policy"]),
        webhook=row["webhook"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        outputs=[ImageResult.model_validate(o) for o in row["outputs"]],
        error=row["error"],
        warnings=row["warnings"],
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        progress_step=row["progress_step"],
        progress_total=row["progress_total"],
    )


def job_counts(by_status: Mapping[str, int], retried: int) -> JobCounts:
    """/health's counts from the number of an endpoint's jobs in each status."""
    return JobCounts(
        in_queue=by_status.get("IN_QUEUE", 0),
        in_progress=by_status.get("IN_PROGRESS", 0),
        completed=by_status.get("COMPLETED", 0),
        failed=by_status.get("FAILED", 0) + by_status.get("TIMED_OUT", 0),
        retried=retried,
    )


class WebhookDelivery(BaseModel):
    """A webhook POST of a finished job: pending, or failed for good."""

    id: int
    job_id: str
    url: str
    attempts: int
    """Tries made so far."""
    event_id: str
    """The event's id (`webhook-id`): the same in every try, so receivers can de-duplicate."""
    created_at: float
    """When the event happened; retries stop a horizon after it."""
    failed_at: float | None = None
    last_error: str | None = None


class WorkerInfo(BaseModel):
    worker_id: str
    heartbeat_at: float
    job_id: str | None


class IdempotencyKey(BaseModel):
    """A client's Idempotency-Key for one submission: the same key with the same request
    (`request_hash`) makes the same job until `expires_at`."""

    key: str
    request_hash: str
    expires_at: float


class KeyTaken(Exception):
    """Another submission holds this Idempotency-Key; nothing was created."""


class JobStore(ABC):
    """Durable job state. Methods are synchronous and safe to call from any thread."""

    @abstractmethod
    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> int:
        """Insert a new IN_QUEUE job; return the number it was given (random, unguessable).
        With `idempotency`, record the key with the job in the same transaction: if the
        owner's key is already held, raise `KeyTaken` and create nothing."""

    @abstractmethod
    def idempotent(self, owner: str, key: str, now: float) -> tuple[str, str] | None:
        """The request hash and job id an owner's unexpired Idempotency-Key made, or None."""

    @abstractmethod
    def get_by_number(self, number: int) -> Job | None:
        """The job with this number, or None."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None if it does not exist (any more)."""

    @abstractmethod
    def statuses(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """Current status of each existing job among `job_ids`."""

    @abstractmethod
    def claim(self, worker_id: str, now: float) -> Job | None:
        """Atomically move the next queued job to IN_PROGRESS for this worker: normal before
        low priority, oldest first, among the models this store was opened for."""

    @abstractmethod
    def claim_batch(self, worker_id: str, now: float, first: Job, limit: int) -> list[Job]:
        """Atomically start up to `limit` more queued jobs that can share `first`'s pipeline
        call (same model and `GenerationRequest.batch_key`), oldest first; while `first` has
        normal priority, no low-priority job rides along (it would slow the normal ones)."""

    def wait_for_jobs(self, timeout_s: float) -> None:
        """Block until a job may be waiting, at most `timeout_s` (a backend without
        notifications just sleeps)."""
        time.sleep(timeout_s)

    @abstractmethod
    def heartbeat(self, worker_id: str, job_id: str | None, now: float) -> None:
        """Record that a worker is alive (and which job it runs)."""

    @abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that has stopped."""

    @abstractmethod
    def workers(self, alive_since: float) -> list[WorkerInfo]:
        """Workers whose last heartbeat is at or after `alive_since`."""

    @abstractmethod
    def add_progress(self, job_id: str, attempt: int, step: int, total: int) -> JobStatus | None:
        """Record progress of a running attempt; return the job's status (None if gone)."""

    @abstractmethod
    def set_preview(self, job_id: str, attempt: int, preview: Preview) -> None:
        """Record the running job's latest preview (nothing if `attempt` is not its current
        run, or the job is no longer running)."""

    @abstractmethod
    def preview(self, job_id: str) -> Preview | None:
        """The job's latest preview, if it has one."""

    @abstractmethod
    def attempt_status(self, job_id: str, attempt: int) -> JobStatus | None:
        """Status of the job if `attempt` is still its current attempt, else None."""

    @abstractmethod
    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        now: float,
        outputs: list[ImageResult] | None = None,
        error: str | None = None,
    ) -> bool:
        """End a running attempt; False if it was cancelled, timed out or re-queued meanwhile."""

    @abstractmethod
    def release(self, job_id: str, attempt: int) -> None:
        """The worker stopped this attempt because it ended elsewhere (cancelled, timed out):
        free whatever delivered it, unless the job has been re-queued since."""

    @abstractmethod
    def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued or running job; return the job afterwards (None if unknown)."""

    @abstractmethod
    def retry(self, job_id: str, now: float) -> bool:
        """Put a FAILED or TIMED_OUT job back in the queue under the same id."""

    @abstractmethod
    def purge(self, owner: str, endpoint: str) -> int:
        """Delete this owner's queued jobs of an endpoint; return how many."""

    @abstractmethod
    def requeue_orphans(
        self,
        worker_ids: list[str] | None,
        stale_before: float,
        max_attempts: int,
        now: float,
        loss: RunLoss,
    ) -> list[str]:
        """Re-queue the running jobs of `worker_ids` (None: of workers silent since
        `stale_before`), which ended by `loss`; fail those whose worker died under them
        `max_attempts` times."""

    @abstractmethod
    def time_out_overdue(self, now: float) -> list[str]:
        """Mark running jobs past their execution timeout TIMED_OUT."""

    @abstractmethod
    def delete_expired(self, now: float) -> list[Job]:
        """Delete finished jobs whose retention has passed; return them."""

    @abstractmethod
    def counts(self, endpoint: str, owner: str | None = None) -> JobCounts:
        """Jobs of an endpoint by state, for /health: one owner's, or everyone's (None)."""

    @abstractmethod
    def active_by_model(self) -> dict[str, JobCounts]:
        """Queued and running jobs of each model (endpoint) that has any, for /metrics; the
        other counts are 0."""

    @abstractmethod
    def queued(self, endpoint: str | None = None, owner: str | None = None) -> int:
        """Number of queued jobs: of an endpoint, of an owner (across endpoints), or both."""

    @abstractmethod
    def read_stream(self, job_id: str) -> list[ProgressEvent]:
        """Progress events of a job not read before; marks them read."""

    @abstractmethod
    def due_webhooks(self, now: float, limit: int) -> list[WebhookDelivery]:
        """Webhook deliveries whose next attempt is due."""

    @abstractmethod
    def webhook_attempted(
        self, delivery_id: int, delivered: bool, next_at: float | None, error: str | None = None
    ) -> None:
        """Record a delivery attempt: delivered (the record goes), to retry at `next_at`, or
        failed for good when next_at is None (kept, with `error`, until the job expires)."""

    @abstractmethod
    def webhook_log(self, job_id: str) -> list[WebhookDelivery]:
        """The job's webhook deliveries not yet delivered: pending or failed."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
