"""RunPod serverless wire format: request bodies and status objects (API.md section 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, JsonValue

from sdserve.canonical import MAX_SEED, ImageResult, Prompt
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.store import WebhookDelivery
from sdserve.registry import ModelFacts
from sdserve.samplers import Scheduler

_ANSWER = ConfigDict(extra="forbid")
"""Answers are declared whole: a key the model lacks is a server bug, not something to drop."""


class RunPodInput(BaseModel):
    """The `input` object of seed 000, with its ranges and defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    negative_prompt: str = ""
    width: int | None = None
    """None: the model's default size (`ModelRules.size`), as are the fields below."""
    height: int | None = None
    init_image: str | None = None
    mask: str | None = None
    guidance_scale: float | None = Field(default=None, ge=1, le=20)
    """None: the model's own default (its family's, or its `models.toml` entry's)."""
    num_inference_steps: int | None = Field(default=None, ge=1, le=500)
    num_outputs: int = Field(default=1, ge=1, le=10)
    prompt_strength: float = Field(default=0.8, ge=0, le=1)
    scheduler: Scheduler | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    lora: str | None = None
    """Beyond RunPod's fields: an installed LoRA by name (`GET /v1/loras`), as DeepInfra's."""
    lora_scale: float = Field(default=1.0, ge=0, le=2)
    """How strongly the LoRA applies (ModelsLab's `lora_strength` range)."""


class RunPodPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    executionTimeout: int | None = Field(default=None, ge=1000, le=7 * 24 * 3600 * 1000)
    """Milliseconds a job may run before it ends TIMED_OUT."""
    ttl: int | None = Field(default=None, ge=1000, le=7 * 24 * 3600 * 1000)
    """Milliseconds a finished job and its images are kept."""
    lowPriority: bool = False


class RunPodRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: RunPodInput
    webhook: AnyHttpUrl | None = None
    policy: RunPodPolicy = RunPodPolicy()


class JobBrief(BaseModel):
    """The answer of /run, /cancel and /retry (and of /runsync past its wait)."""

    model_config = _ANSWER

    id: str
    status: JobStatus
    warnings: list[str] | None = None
    """Beyond RunPod's shape, only when there are some: what the request will not do though it
    was accepted (a prompt the demo model knows no word of)."""


class ImageOutput(BaseModel):
    image: str
    """A signed URL of the PNG, or the PNG as base64 (`output_format = "base64"`)."""
    seed: int


class Progress(BaseModel):
    progress: str
    """Steps done out of all: `3/25`."""


class JobState(BaseModel):
    """The status object of /status and /runsync; `output` once done (progress while running),
    `error` if it failed."""

    model_config = _ANSWER

    id: str
    status: JobStatus
    delayTime: int
    """Milliseconds from submission to start."""
    executionTime: int
    """Milliseconds it ran."""
    input: dict[str, JsonValue]
    """The input as sent."""
    output: list[ImageOutput] | Progress | None = None
    error: str | None = None
    workerId: str | None = None
    warnings: list[str] | None = None
    """As in `JobBrief`: only when there are some."""


class PurgeResult(BaseModel):
    model_config = _ANSWER

    removed: int
    status: Literal["completed"]


class WebhookRecord(BaseModel):
    """A webhook delivery not yet delivered: `pending` (retried), or `failed` for good."""

    model_config = _ANSWER

    webhookId: str
    """The `webhook-id` every try of this event is signed with."""
    url: str
    status: Literal["pending", "failed"]
    attempts: int
    lastError: str | None = None
    failedAt: float | None = None


class WebhookLog(BaseModel):
    model_config = _ANSWER

    id: str
    webhooks: list[WebhookRecord]


def render_webhook_log(job_id: str, deliveries: list[WebhookDelivery]) -> WebhookLog:
    return WebhookLog(
        id=job_id,
        webhooks=[
            WebhookRecord(
                webhookId=d.event_id,
                url=d.url,
                status="failed" if d.failed_at is not None else "pending",
                attempts=d.attempts,
                lastError=d.last_error,
                failedAt=d.failed_at,
            )
            for d in deliveries
        ],
    )


class JobCountsBody(BaseModel):
    completed: int
    failed: int
    inProgress: int
    inQueue: int
    retried: int


class WorkerCounts(BaseModel):
    idle: int
    running: int


class _Named(BaseModel):
    name: str


class EndpointModel(ModelFacts, _Named):
    """The model an endpoint serves (its name first), beyond RunPod's shape."""


class Health(BaseModel):
    """Job counts of an endpoint, the workers, and the model it serves."""

    model_config = _ANSWER

    jobs: JobCountsBody
    workers: WorkerCounts
    model: EndpointModel


class StreamProgress(Progress):
    step: int
    total: int


class StreamEvent(BaseModel):
    output: StreamProgress


class StreamChunk(BaseModel):
    """Progress events not read before; `output` and `error` once the job is done."""

    model_config = _ANSWER

    id: str
    status: JobStatus
    stream: list[StreamEvent]
    output: list[ImageOutput] | Progress | None = None
    error: str | None = None


MAX_WAIT_MS = 300_000
"""Longest /runsync wait a client may ask for."""

ImageLink = Callable[[ImageResult], str]


def _progress(job: Job) -> str:
    return f"{job.progress_step}/{job.progress_total}"


def render_output(job: Job, link: ImageLink) -> Any:
    """The `output` of a status object: images when done, progress while running."""
    if job.status == "COMPLETED":
        return [{"image": link(result), "seed": result.seed} for result in job.outputs]
    if job.status == "IN_PROGRESS" and job.progress_total:
        return {"progress": _progress(job)}
    return None


def render_status(job: Job, link: ImageLink) -> dict[str, Any]:
    """The full status object of API.md section 1."""
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "delayTime": job.delay_ms,
        "executionTime": job.execution_ms,
        "input": job.input,
    }
    output = render_output(job, link)
    if output is not None:
        body["output"] = output
    if job.error is not None:
        body["error"] = job.error
    if job.worker_id is not None:
        body["workerId"] = job.worker_id
    return body | _warnings(job)


def render_brief(job: Job) -> dict[str, Any]:
    return {"id": job.id, "status": job.status.value} | _warnings(job)


def _warnings(job: Job) -> dict[str, Any]:
    return {"warnings": job.warnings} if job.warnings else {}
