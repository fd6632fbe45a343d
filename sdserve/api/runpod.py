"""RunPod serverless dialect: /v1|v2/{endpoint}/run, runsync, status, cancel, retry, ..."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from sdserve.api.context import ApiContext, Caller, get_caller
from sdserve.api.dialect import Dialect
from sdserve.api.errors import ErrorBody
from sdserve.api.events import PING_S, follow
from sdserve.api.idempotency import OPENAPI_EXTRA, idempotency_of
from sdserve.api.openapi import AUTHENTICATED, SUBMITTING, ErrorDocs
from sdserve.api.rules import RawFields, pick
from sdserve.api.runpod_protocol import (
    MAX_WAIT_MS,
    Health,
    JobBrief,
    JobState,
    PurgeResult,
    RunPodRequest,
    StreamChunk,
    WebhookLog,
    render_brief,
    render_output,
    render_status,
    render_webhook_log,
)
from sdserve.jobs.models import Job, JobPolicy, ProgressEvent
from sdserve.jobs.requests import RequestDraft, prefixed
from sdserve.jobs.service import Submission
from sdserve.registry import describe

router = APIRouter(tags=["runpod"])

PREFIXES = ("/v2", "/v1")
"""RunPod's current form (the SDK's) and the seed's; the server mounts the router at both,
v2 first: routes are matched in order and most calls use it."""
_PREFIX = "/{endpoint:path}"
_FIELDS = prefixed("input.")
DIALECT_NAME = "runpod"
_OMIT_UNSET: dict[str, Any] = {"response_model_exclude_unset": True}
"""Answers leave out the keys a job has no value for (output, error, workerId), as RunPod's do."""
_ERRORS = ErrorDocs(ErrorBody)
_SUBMITS = _ERRORS.responses(*SUBMITTING)
_READS = _ERRORS.responses(*AUTHENTICATED, 404)
"""A GET naming an endpoint, and maybe a job, that may not exist."""
_ACTS = _ERRORS.responses(*AUTHENTICATED, 404, 413)
"""A POST naming an endpoint and maybe a job: its body is not read, but it is size-checked."""


async def _submit(caller: Caller, endpoint: str, body: RunPodRequest) -> Job:
    given = body.input
    # The input's fields are canonical ones; its masks repaint black (the RunPod worker's).
    draft = RequestDraft(model=endpoint, mask_convention="black", **given.model_dump())
    policy = JobPolicy(
        execution_timeout_ms=body.policy.executionTimeout,
        ttl_ms=body.policy.ttl,
        low_priority=body.policy.lowPriority,
    )
    how = Submission(
        owner=caller.owner,
        dialect=DIALECT_NAME,
        echo=given.model_dump(mode="json", exclude_unset=True),
        fields=_FIELDS,
        policy=policy,
        webhook=str(body.webhook) if body.webhook else None,
        idempotency=await idempotency_of(caller.request),
    )
    return await caller.ctx.service.submit(draft, how)


def _status(caller: Caller, job: Job) -> dict[str, Any]:
    return render_status(job, caller.status_link(job))


@router.post(
    _PREFIX + "/run",
    response_model=JobBrief,
    responses=_SUBMITS,
    openapi_extra=OPENAPI_EXTRA,
    **_OMIT_UNSET,
)
async def run(
    endpoint: str, body: RunPodRequest, caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """Queue a job; answers at once with its id."""
    return render_brief(await _submit(caller, endpoint, body))


@router.post(
    _PREFIX + "/runsync",
    response_model=JobState | JobBrief,
    responses=_SUBMITS,
    openapi_extra=OPENAPI_EXTRA,
    **_OMIT_UNSET,
)
async def runsync(
    endpoint: str,
    body: RunPodRequest,
    wait: int = Query(
        default=90_000, ge=0, le=MAX_WAIT_MS, description="Milliseconds to wait for the result"
    ),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    """Run a job and answer with its result, or with its id if it takes longer than `wait`."""
    job = await _submit(caller, endpoint, body)
    job = await caller.ctx.service.wait_for(caller.owner, job, wait / 1000)
    if not job.status.is_final:
        return render_brief(job)
    # Off the event loop: base64 output reads the images from their store.
    return await run_in_threadpool(_status, caller, job)


@router.get(_PREFIX + "/status/{job_id}", response_model=JobState, responses=_READS, **_OMIT_UNSET)
@router.post(_PREFIX + "/status/{job_id}", response_model=JobState, responses=_ACTS, **_OMIT_UNSET)
async def status(
    endpoint: str, job_id: str, caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """The job's state, timings, and output once done."""
    job = await caller.ctx.service.read(caller.owner, endpoint, job_id)
    if caller.ctx.inline_images:
        return await run_in_threadpool(_status, caller, job)
    # Signed links: a few hashes, no I/O. The answer's check and encoding run here too, not
    # in a second trip to a thread, as a plain function's would.
    return _status(caller, job)


@router.post(_PREFIX + "/cancel/{job_id}", response_model=JobBrief, responses=_ACTS, **_OMIT_UNSET)
def cancel(endpoint: str, job_id: str, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """Cancel a queued or running job; a running one stops at its next denoising step."""
    return render_brief(caller.ctx.service.cancel(caller.owner, endpoint, job_id))


@router.post(
    _PREFIX + "/retry/{job_id}",
    response_model=JobBrief,
    responses=_ERRORS.responses(*AUTHENTICATED, 404, 409, 413),
    **_OMIT_UNSET,
)
def retry(endpoint: str, job_id: str, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """Run a FAILED or TIMED_OUT job again under the same id."""
    return render_brief(caller.ctx.service.retry(caller.owner, endpoint, job_id))


@router.post(_PREFIX + "/purge-queue", response_model=PurgeResult, responses=_ACTS)
def purge_queue(endpoint: str, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """Remove the caller's queued jobs of this endpoint."""
    return {"removed": caller.ctx.service.purge(caller.owner, endpoint), "status": "completed"}


@router.get(_PREFIX + "/webhooks/{job_id}", response_model=WebhookLog, responses=_READS)
def webhooks(endpoint: str, job_id: str, caller: Caller = Depends(get_caller)) -> WebhookLog:
    """The job's webhook deliveries not yet made: pending ones, and those that ran out of
    retries (kept as failed until the job expires). Delivered ones are not listed."""
    deliveries = caller.ctx.service.webhooks(caller.owner, endpoint, job_id)
    return render_webhook_log(job_id, deliveries)


@router.get(_PREFIX + "/health", response_model=Health, responses=_READS)
def health(endpoint: str, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """The caller's own jobs of this endpoint by state (no key sees another's), and the
    state of the workers, which all keys share."""
    spec = caller.ctx.service.resolve_endpoint(endpoint)
    counts = caller.ctx.service.counts(caller.owner, endpoint)
    workers = caller.ctx.service.workers()
    running = sum(1 for w in workers if w.job_id is not None)
    return {
        "jobs": {
            "completed": counts.completed,
            "failed": counts.failed,
            "inProgress": counts.in_progress,
            "inQueue": counts.in_queue,
            "retried": counts.retried,
        },
        "workers": {"idle": len(workers) - running, "running": running},
        # Beyond RunPod's shape: the model this endpoint serves, so a client knows what a
        # request leaving fields out gets.
        "model": {"name": spec.name, **describe(spec).model_dump()},
    }


@router.get(
    _PREFIX + "/stream/{job_id}", response_model=StreamChunk, responses=_READS, **_OMIT_UNSET
)
async def stream(
    endpoint: str, job_id: str, caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """Progress events not read before; once the job is done, its output too."""
    job, events = await caller.ctx.service.read_stream(caller.owner, endpoint, job_id)
    if caller.ctx.inline_images and job.status.is_final:
        return await run_in_threadpool(_stream_chunk, caller, job, events)
    return _stream_chunk(caller, job, events)


_EVENTS_DOC = """Server-sent events (`text/event-stream`), one per change, until the job ends:

- `progress`: `{"id", "status", "step", "total"}` when the job's status or step changes;
- `preview`: `{"id", "step", "total", "media_type": "image/jpeg", "image": base64}`, a small
  preview of the job's first image forming (the latents projected to RGB, 1/8 of the image's
  side), every few steps;
- `done`: the job's final state, exactly as `/status` answers it (its output included).

Any number of readers may follow one job; a reader arriving after the end gets `done` at once.
"""


@router.get(
    _PREFIX + "/events/{job_id}",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": _EVENTS_DOC,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_READS,
    },
)
async def events(
    endpoint: str, job_id: str, caller: Caller = Depends(get_caller)
) -> EventSourceResponse:
    """The job's progress, previews and end as server-sent events (see the 200 answer)."""
    job = await caller.ctx.service.read(caller.owner, endpoint, job_id)  # 404 before streaming
    return EventSourceResponse(_job_events(caller, job), ping=PING_S)


async def _job_events(caller: Caller, job: Job) -> AsyncIterator[ServerSentEvent]:
    async for update in follow(caller.ctx.service, caller.owner, job):
        job = update.job
        base = {"id": job.id, "status": job.status.value}
        if job.status.is_final:
            body = await run_in_threadpool(_status, caller, job)
            yield ServerSentEvent(json.dumps(body), event="done")
            return
        yield ServerSentEvent(
            json.dumps({**base, "step": job.progress_step, "total": job.progress_total}),
            event="progress",
        )
        if update.preview is not None:
            preview = {
                "id": job.id,
                "step": update.preview.step,
                "total": update.preview.total,
                "media_type": "image/jpeg",
                "image": base64.b64encode(update.preview.jpeg).decode(),
            }
            yield ServerSentEvent(json.dumps(preview), event="preview")


def _stream_chunk(caller: Caller, job: Job, events: list[ProgressEvent]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "stream": [
            {"output": {"progress": f"{e.step}/{e.total}", "step": e.step, "total": e.total}}
            for e in events
        ],
    }
    if job.status.is_final:
        output = render_output(job, caller.status_link(job))
        if output is not None:
            body["output"] = output
        if job.error:
            body["error"] = job.error
    return body


def render_webhook(job: Job, ctx: ApiContext) -> dict[str, Any]:
    """The webhook payload: the status object, as /status answers it."""
    return render_status(job, ctx.image_link(job, ctx.base_url(None)))


_CHECKED = {name: name for name in ("width", "height", "scheduler", "init_image")}


def _raw_fields(request: Request, body: object) -> RawFields:
    given = body.get("input") if isinstance(body, dict) else None
    return RawFields(request.path_params.get("endpoint", ""), pick(given, _CHECKED), _FIELDS)


DIALECT = Dialect(
    name=DIALECT_NAME,
    routers=[(router, prefix) for prefix in PREFIXES],
    render_webhook=render_webhook,
    raw_readers={
        f"{prefix}/{{endpoint}}/{call}": _raw_fields
        for prefix in PREFIXES
        for call in ("run", "runsync")
    },
)
