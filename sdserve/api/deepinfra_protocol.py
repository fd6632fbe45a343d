"""DeepInfra inference wire format: the request fields and the answer (API.md section 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, BeforeValidator, ConfigDict, Field

from sdserve.canonical import MAX_SEED, ImageResult, Prompt
from sdserve.jobs.models import Job, JobStatus

SIZES = (128, 256, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024)
"""The widths and heights DeepInfra accepts (the model's max_size still applies)."""

InferenceStatus = Literal["queued", "succeeded", "failed"]


def _allowed_size(value: int) -> int:
    if value not in SIZES:
        raise ValueError(f"must be one of {', '.join(map(str, SIZES))}")
    return value


def _empty_is_none(value: object) -> object:
    # Form clients send a field left blank as "" (`-F seed=`), a browser a file input left
    # empty as an empty upload: DeepInfra reads both as not given.
    return None if value in ("", b"") else value


def _string_or_file(value: object) -> object:
    if value is not None and not isinstance(value, str | bytes):
        raise ValueError("must be an http(s) URL, a data URI, base64 text or an uploaded file")
    return value


Size = Annotated[int, AfterValidator(_allowed_size), Field(json_schema_extra={"enum": list(SIZES)})]
_Blank = BeforeValidator(_empty_is_none)


class DeepInfraRequest(BaseModel):
    """The input fields of seed 002, with their ranges and defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    negative_prompt: str = ""
    image: Annotated[str | bytes | None, BeforeValidator(_string_or_file), _Blank] = None
    """Starting image: URL, data URI or base64 text, or the bytes of an uploaded file."""
    num_images: int = Field(default=1, ge=1, le=4)
    num_inference_steps: int | None = Field(default=None, ge=1, le=512)
    """None: the model's default, as for every field below that is None."""
    guidance_scale: float | None = Field(default=None, ge=1, le=20)
    """None: the model's own default (its family's, or its `models.toml` entry's)."""
    strength: float = Field(default=0.8, ge=0, le=1)
    """How far to depart from `image`: 1 ignores it, 0 keeps it."""
    width: Size | None = None
    height: Size | None = None
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED), _Blank] = None
    use_compel: bool = False
    lora: Annotated[str | None, _Blank] = None
    """Name of installed LoRA weights."""
    webhook: Annotated[AnyHttpUrl | None, _Blank] = None
    """Answer at once and POST the full answer here when the job ends."""


class InferenceStatusBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: InferenceStatus
    runtime_ms: int
    cost: float
    """The model's `price` per image, times the images made."""
    tokens_generated: int
    tokens_input: int


class InferenceAnswer(BaseModel):
    """The answer of an inference: the images as PNG data URIs once done; `error` if not."""

    model_config = ConfigDict(extra="forbid")

    images: list[str]
    nsfw_content_detected: list[bool]
    seed: int
    """The first image's seed (image i has seed + i)."""
    request_id: str
    inference_status: InferenceStatusBody
    error: str | None = None
    warnings: list[str] | None = None
    """Beyond DeepInfra's shape, only when there are some: what the request will not do though
    it was accepted (a prompt the demo model knows no word of)."""


DataUri = Callable[[ImageResult], str]


def _inference_status(
    status: InferenceStatus, runtime_ms: int = 0, cost: float = 0.0
) -> dict[str, Any]:
    return {
        "status": status,
        "runtime_ms": runtime_ms,
        "cost": cost,
        "tokens_generated": 0,
        "tokens_input": 0,
    }


def _answer(
    job: Job,
    status: dict[str, Any],
    images: list[str] | None = None,
    nsfw: list[bool] | None = None,
) -> dict[str, Any]:
    return {
        "images": images or [],
        "nsfw_content_detected": nsfw or [],
        "seed": job.request.seed,  # the first image's seed (image i has seed + i)
        "request_id": job.id,
        "inference_status": status,
    } | ({"warnings": job.warnings} if job.warnings else {})


def render_queued(job: Job) -> dict[str, Any]:
    """The immediate answer of a request with a webhook."""
    return _answer(job, _inference_status("queued"))


def render_answer(job: Job, data_uri: DataUri, price: float) -> dict[str, Any]:
    """The full answer of a finished job; one that did not succeed carries its `error`."""
    if job.status == JobStatus.COMPLETED:
        cost = price * len(job.outputs)
        status = _inference_status("succeeded", job.execution_ms, cost)
        images = [data_uri(result) for result in job.outputs]
        return _answer(job, status, images, [result.nsfw for result in job.outputs])
    answer = _answer(job, _inference_status("failed", job.execution_ms))
    answer["error"] = job.error or f"inference ended {job.status.value}"
    return answer
