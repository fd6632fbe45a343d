"""JobService: the one interface every dialect uses to submit, watch and control jobs."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import JsonValue

from sdserve.canonical import GenerationRequest
from sdserve.jobs.errors import (
    Conflict,
    EndpointNotFound,
    IdempotencyMismatch,
    InvalidInput,
    JobError,
    JobNotFound,
    QueueFull,
    QuotaFull,
    ResultTimeout,
    ServerStopping,
)
from sdserve.jobs.models import Job, JobCounts, JobPolicy, JobStatus, Preview, ProgressEvent
from sdserve.jobs.outbound import check_url
from sdserve.jobs.reads import BatchedReads
from sdserve.jobs.requests import (
    FieldNames,
    InputLimits,
    RequestDraft,
    build_request,
    request_warnings,
)
from sdserve.jobs.store import IdempotencyKey, JobStore, KeyTaken, WebhookDelivery, WorkerInfo
from sdserve.jobs.watcher import JobWatcher
from sdserve.registry import ModelRegistry, ModelSpec

log = logging.getLogger(__name__)

STOPPING_RETRY_AFTER_S = 5
"""Retry-After of a synchronous call whose job the stopping server cancelled before it began:
another node may take it at once, a restarted one within seconds."""

UnknownModel = Callable[[str, ModelRegistry], JobError]
"""How a dialect refuses a model name the registry lacks (given the name and the registry)."""


@dataclass(frozen=True)
class IdempotentRequest:
    """A client's Idempotency-Key and the hash of the request it came with."""

    key: str
    request_hash: str
    header: str
    """The header's name as the dialect reads it, for errors."""


@dataclass(frozen=True)
class Submission:
    """Who submits a draft through which dialect, and what to keep with the job."""

    owner: str
    dialect: str
    """Stored with the job (`Job.dialect`): its webhook takes this dialect's shape."""
    echo: dict[str, JsonValue]
    """The input as the client sent it, to answer with later (RunPod's /status `input`)."""
    fields: FieldNames = field(default_factory=dict)
    policy: JobPolicy = field(default_factory=JobPolicy)
    webhook: str | None = None
    extra: dict[str, JsonValue] = field(default_factory=dict)
    unknown_model: UnknownModel = EndpointNotFound.of
    model_rules: Callable[[ModelSpec], None] | None = None
    """The dialect's own rules that depend on the model (ModelsLab's size limits)."""
    idempotency: IdempotentRequest | None = None
    """With a key, the same request again returns the job the first one made."""


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
        limits: InputLimits,
        max_queued_per_key: int | None = None,
        idempotency_ttl_s: float = 86400.0,
    ) -> None:
        """`max_queued_per_key`: queued jobs an owner may have (None: no quota, as on an open
        server's one owner). `idempotency_ttl_s`: how long an Idempotency-Key names its job."""
        self.store = store
        self.registry = registry
        self._limits = limits
        self._wake_workers = wake_workers
        self._max_queue = max_queue
        self._max_queued_per_key = max_queued_per_key
        self._idempotency_ttl_s = idempotency_ttl_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._watcher = watcher
        self._reads: BatchedReads[str, Job] = BatchedReads(self._get_many)
        self._events: BatchedReads[str, list[ProgressEvent]] = BatchedReads(
            self._take_events, taken=True
        )

    def resolve_endpoint(self, name: str, unknown: UnknownModel = EndpointNotFound.of) -> ModelSpec:
        """The model an endpoint name or alias serves; `unknown` says how a dialect refuses
        a name the registry lacks."""
        spec = self.registry.resolve(name)
        if spec is None:
            raise unknown(name, self.registry)
        return spec

    def models(self) -> list[ModelSpec]:
        """Every model served, each once."""
        return self.registry.models

    def price(self, endpoint: str) -> float:
        """What one image of this endpoint costs (0 for a model no longer served)."""
        spec = self.registry.resolve(endpoint)
        return spec.price if spec is not None else 0.0

    async def submit(self, draft: RequestDraft, how: Submission) -> Job:
        """Resolve the draft's model, check the draft against it, load its images and queue
        the job; a worker is woken. A request with an Idempotency-Key made before gets the
        job it made instead."""
        if how.idempotency is not None:
            earlier = await asyncio.to_thread(self._earlier_job, how.owner, how.idempotency)
            if earlier is not None:
                return earlier
        spec = self.resolve_endpoint(draft.model, how.unknown_model)
        if how.model_rules is not None:
            how.model_rules(spec)
        if how.webhook is not None and not await check_url(self._limits.urls, how.webhook):
            field = how.fields.get("webhook", "webhook")
            raise InvalidInput(field, "must be an http(s) URL of a public host")
        request = await build_request(spec, draft, how.fields, self._limits)
        warnings = request_warnings(spec, request)
        job = await asyncio.to_thread(self._queue, request, how, warnings)
        for warning in warnings:
            log.warning("job %s: %s", job.id, warning)
        return job

    def _earlier_job(self, owner: str, idempotency: IdempotentRequest) -> Job | None:
        """The job this owner's Idempotency-Key made, if the request is the same; None if the
        key is new."""
        held = self.store.idempotent(owner, idempotency.key, time.time())
        if held is None:
            return None
        request_hash, job_id = held
        if request_hash != idempotency.request_hash:
            raise IdempotencyMismatch(idempotency.header, job_id)
        job = self.store.get(job_id)
        if job is None:
            raise Conflict(
                f"{idempotency.header} {idempotency.key!r} made job {job_id}, which has expired"
                " with its results; send a new key to generate again"
            )
        return job

    def _queue(self, request: GenerationRequest, how: Submission, warnings: list[str]) -> Job:
        if self.store.queued(request.model) >= self._max_queue:
            raise QueueFull(request.model, retry_after_s=5)
        quota = self._max_queued_per_key
        if quota is not None and self.store.queued(owner=how.owner) >= quota:
            raise QuotaFull(quota, retry_after_s=5)
        job = Job(
            id=str(uuid.uuid4()),
            owner=how.owner,
            endpoint=request.model,
            request=request,
            input=how.echo,
            policy=how.policy,
            webhook=how.webhook,
            created_at=time.time(),
            dialect=how.dialect,
            extra=how.extra,
            warnings=warnings,
        )
        key = None
        if how.idempotency is not None:
            expires_at = job.created_at + self._idempotency_ttl_s
            key = IdempotencyKey(
                key=how.idempotency.key,
                request_hash=how.idempotency.request_hash,
                expires_at=expires_at,
            )
        try:
            number = self.store.create(job, key)
        except KeyTaken:  # the same key, sent again at the same time: the first one won
            assert how.idempotency is not None
            earlier = self._earlier_job(how.owner, how.idempotency)
            if earlier is None:
                raise Conflict("the same Idempotency-Key is being submitted; retry") from None
            return earlier
        self._wake_workers()
        return job.model_copy(update={"number": number})

    def get(self, owner: str, endpoint: str, job_id: str) -> Job:
        """The caller's job on this endpoint; another owner's job is reported as not found."""
        spec = self.resolve_endpoint(endpoint)
        return _owned(self.store.get(job_id), owner, spec, job_id)

    async def read(self, owner: str, endpoint: str, job_id: str) -> Job:
        """`get` for the event loop: concurrent reads share trips to a thread."""
        spec = self.resolve_endpoint(endpoint)
        return _owned(await self._reads.read(job_id), owner, spec, job_id)

    def _get_many(self, job_ids: list[str]) -> dict[str, Job]:
        jobs = {job_id: self.store.get(job_id) for job_id in job_ids}
        return {job_id: job for job_id, job in jobs.items() if job is not None}

    def get_by_number(self, owner: str, number: int) -> Job:
        """The caller's job with this number (ModelsLab's integer ids)."""
        job = self.store.get_by_number(number)
        if job is None or job.owner != owner:
            raise JobNotFound(str(number))
        return job

    async def wait_for(
        self, owner: str, job: Job, timeout_s: float, end_if_stopping: bool = True
    ) -> Job:
        """The caller's job once final, or as it stands after `timeout_s`, or, if
        `end_if_stopping`, while it is still queued once the server stops taking jobs."""
        await self._watcher.wait(job.id, timeout_s, releasable=end_if_stopping)
        current = await asyncio.to_thread(self.store.get, job.id)
        if current is None or current.owner != owner:
            raise JobNotFound(job.id)
        return current

    async def finish_within(self, owner: str, job: Job, timeout_s: float) -> Job:
        """The final job for synchronous dialects; past `timeout_s` it is cancelled (504), as is
        a job still queued when the server stops (503: the caller may send it again)."""
        job = await self.wait_for(owner, job, timeout_s)
        if not job.status.is_final:
            await asyncio.to_thread(self.cancel, owner, job.endpoint, job.id)
            if job.status == JobStatus.IN_QUEUE and self._watcher.queued_released:
                raise ServerStopping(job.id, STOPPING_RETRY_AFTER_S)
            raise ResultTimeout(
                f"job {job.id} was not done within {timeout_s:.0f} s and has been cancelled"
            )
        return job

    def stop_waiting_on_queued(self) -> None:
        """The node's workers take no more jobs (the server is stopping): calls waiting on a
        job still queued answer now instead of at their timeout (safe in a signal handler)."""
        self._watcher.release_queued()

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

    def counts(self, owner: str, endpoint: str) -> JobCounts:
        """The owner's jobs of an endpoint, by state."""
        return self.store.counts(self.resolve_endpoint(endpoint).name, owner)

    def active_by_model(self) -> dict[str, JobCounts]:
        """Queued and running jobs of every configured model, and of any other that has some."""
        counts = {spec.name: JobCounts() for spec in self.registry.models}
        counts.update(self.store.active_by_model())
        return counts

    def workers(self) -> list[WorkerInfo]:
        """Workers that sent a heartbeat recently."""
        return self.store.workers(time.time() - self._heartbeat_timeout_s)

    def webhooks(self, owner: str, endpoint: str, job_id: str) -> list[WebhookDelivery]:
        """The caller's job's webhook deliveries not yet delivered: pending, or failed for good
        (kept until the job expires)."""
        self.get(owner, endpoint, job_id)
        return self.store.webhook_log(job_id)

    async def read_stream(
        self, owner: str, endpoint: str, job_id: str
    ) -> tuple[Job, list[ProgressEvent]]:
        """Progress events not read before, and the job as it stands; concurrent reads share
        trips to a thread."""
        job = await self.read(owner, endpoint, job_id)
        events = await self._events.read(job_id) or []
        if job.status.is_final:  # its events were all written before it ended
            return job, events
        return await self.read(owner, endpoint, job_id), events

    async def preview(self, job: Job) -> Preview | None:
        """The latest preview of a job read with `read` (so already the caller's)."""
        return await asyncio.to_thread(self.store.preview, job.id)

    def _take_events(self, job_ids: list[str]) -> dict[str, list[ProgressEvent]]:
        return {job_id: self.store.read_stream(job_id) for job_id in job_ids}

    async def close(self) -> None:
        await self._watcher.close()
        self.close_processes()

    def close_processes(self) -> None:
        """Stop the image-decoding processes (all `close` does outside the event loop)."""
        self._limits.images.close()


def _owned(job: Job | None, owner: str, spec: ModelSpec, job_id: str) -> Job:
    """The job if it is the owner's and of the endpoint's model; else not found, as if unknown."""
    if job is None or job.owner != owner or job.endpoint != spec.name:
        raise JobNotFound(job_id)
    return job
