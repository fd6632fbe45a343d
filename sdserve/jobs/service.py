"""JobService: the one interface every dialect uses to submit, watch and control jobs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from pydantic import JsonValue

from sdserve.canonical import GenerationRequest
from sdserve.jobs.errors import (
    Conflict,
    EndpointNotFound,
    JobNotFound,
    QueueFull,
    ResultTimeout,
)
from sdserve.jobs.models import Job, JobCounts, JobPolicy, JobStatus, ProgressEvent
from sdserve.jobs.store import JobStore, WorkerInfo
from sdserve.jobs.watcher import JobWatcher
from sdserve.registry import ModelRegistry, ModelSpec


class JobService:
    """Submits, reads and controls jobs on behalf of an owner (an API key's fingerprint)."""

    def __init__(
        self,
        store: JobStore,
        registry: ModelRegistry,
        *,
        watcher: JobWatcher,
        wake_workers: Callable[[], None],
        max_queue: int,
        heartbeat_timeout_s: float,
    ) -> None:
        self.store = store
        self.registry = registry
        self._wake_workers = wake_workers
        self._max_queue = max_queue
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._watcher = watcher

    def resolve_endpoint(self, name: str) -> ModelSpec:
        spec = self.registry.resolve(name)
        if spec is None:
            raise EndpointNotFound(name, self.registry.names)
        return spec

    def submit(
        self,
        owner: str,
        request: GenerationRequest,
        input: dict[str, JsonValue],
        policy: JobPolicy,
        webhook: str | None,
        dialect: str = "runpod",
        extra: dict[str, JsonValue] | None = None,
    ) -> Job:
        """Queue a job for `request.model` and wake a worker."""
        if self.store.queued(request.model) >= self._max_queue:
            raise QueueFull(request.model, retry_after_s=5)
        job = Job(
            id=str(uuid.uuid4()),
            owner=owner,
            endpoint=request.model,
            request=request,
            input=input,
            policy=policy,
            webhook=webhook,
            created_at=time.time(),
            dialect=dialect,
            extra=extra or {},
        )
        job = job.model_copy(update={"number": self.store.create(job)})
        self._wake_workers()
        return job

    def get(self, owner: str, endpoint: str, job_id: str) -> Job:
        """The caller's job on this endpoint; another owner's job is reported as not found."""
        spec = self.resolve_endpoint(endpoint)
        job = self.store.get(job_id)
        if job is None or job.owner != owner or job.endpoint != spec.name:
            raise JobNotFound(job_id)
        return job

    def get_by_number(self, owner: str, number: int) -> Job:
        """The caller's job with this number (ModelsLab's integer ids)."""
        job = self.store.get_by_number(number)
        if job is None or job.owner != owner:
            raise JobNotFound(str(number))
        return job

    async def wait_for(self, owner: str, job: Job, timeout_s: float) -> Job:
        """The caller's job once final, or as it stands after `timeout_s`."""
        await self._watcher.wait(job.id, timeout_s)
        current = self.store.get(job.id)
        if current is None or current.owner != owner:
            raise JobNotFound(job.id)
        return current

    async def finish_within(self, owner: str, job: Job, timeout_s: float) -> Job:
        """The final job for synchronous dialects; past `timeout_s` it is cancelled (504)."""
        job = await self.wait_for(owner, job, timeout_s)
        if not job.status.is_final:
            await asyncio.to_thread(self.cancel, owner, job.endpoint, job.id)
            raise ResultTimeout(
                f"job {job.id} was not done within {timeout_s:.0f} s and has been cancelled"
            )
        return job

    def cancel(self, owner: str, endpoint: str, job_id: str) -> Job:
        """Cancel a queued or running job (a running one stops at its next step)."""
        self.get(owner, endpoint, job_id)
        job = self.store.cancel(job_id, time.time())
        if job is None:
            raise JobNotFound(job_id)
        self._watcher.notify(job_id)
        return job

    def retry(self, owner: str, endpoint: str, job_id: str) -> Job:
        """Re-queue a FAILED or TIMED_OUT job under the same id."""
        job = self.get(owner, endpoint, job_id)
        if not self.store.retry(job_id, time.time()):
            raise Conflict(
                f"job {job_id} is {job.status.value}; only FAILED or TIMED_OUT jobs can be retried"
            )
        # Answer with the state this call set: a worker may claim the job at once.
        requeued = job.model_copy(update={"status": JobStatus.IN_QUEUE, "error": None})
        self._wake_workers()
        return requeued

    def purge(self, owner: str, endpoint: str) -> int:
        """Delete the caller's queued jobs of an endpoint."""
        return self.store.purge(owner, self.resolve_endpoint(endpoint).name)

    def counts(self, endpoint: str) -> JobCounts:
        return self.store.counts(self.resolve_endpoint(endpoint).name)

    def workers(self) -> list[WorkerInfo]:
        """Workers that sent a heartbeat recently."""
        return self.store.workers(time.time() - self._heartbeat_timeout_s)

    def stream(self, owner: str, endpoint: str, job_id: str) -> tuple[Job, list[ProgressEvent]]:
        """Progress events not read before, and the job as it stands."""
        self.get(owner, endpoint, job_id)
        events = self.store.read_stream(job_id)
        return self.get(owner, endpoint, job_id), events

    async def close(self) -> None:
        await self._watcher.close()
