"""OpenAI images wire format: request bodies, answers and errors (API.md section 4)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import UploadFile
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from sdserve.api.errors import ApiError
from sdserve.canonical import MAX_SEED, ImageResult, Prompt
from sdserve.jobs.models import Job
from sdserve.registry import DEFAULT_MODEL, ModelFacts, ModelSpec, describe
from sdserve.samplers import Scheduler

_ANSWER = ConfigDict(extra="forbid")
"""Answers are declared whole: a key the model lacks is a server bug, not something to drop."""
ResponseFormat = Literal["url", "b64_json"]
ImageData = Callable[[ImageResult], dict[str, str]]
"""One image as `{"url": ...}` or `{"b64_json": ...}`."""

SIZE = re.compile(r"(\d{1,5})\s*[xX]\s*(\d{1,5})")


def _canonical_size(value: str | None) -> str | None:
    if value is None or value == "auto":
        return None
    match = SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError("must be WIDTHxHEIGHT, e.g. 512x512, or auto")
    return f"{int(match[1])}x{int(match[2])}"


def _not_streaming(value: bool) -> bool:
    if value:
        raise ValueError("streaming is supported by /images/generations only: leave it false")
    return value


def _one_upload(value: object) -> object:
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"takes one image (got {len(value)})")
        value = value[0]
    if isinstance(value, str):
        raise ValueError("must be an uploaded file (a multipart file part), not text")
    return value


Size = Annotated[str | None, AfterValidator(_canonical_size)]
"""`WIDTHxHEIGHT`, kept as `{width}x{height}`; None (also for `auto`) is the default."""


class ImageOptions(BaseModel):
    """The fields generations and edits share: OpenAI's own, then sdserve's extensions."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    model: str = DEFAULT_MODEL
    """A model name or alias of the registry."""
    n: int = Field(default=1, ge=1, le=10)
    size: Size = None
    response_format: ResponseFormat = "url"
    output_format: Literal["png"] = "png"
    """Images are always PNG (with their parameters embedded); other formats are refused."""
    # Accepted so that clients setting them keep working; they change nothing here.
    quality: str | None = None
    background: str | None = None
    output_compression: int | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # sdserve's extensions (with the openai SDK: `extra_body={...}`).
    negative_prompt: str = ""
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    """The first image's seed (image i gets seed + i); random when absent."""
    num_inference_steps: int | None = Field(default=None, ge=1, le=500)
    """None: the model's default, as for guidance_scale and scheduler."""
    guidance_scale: float | None = Field(default=None, ge=1, le=20)
    """None: the model's own default (its family's, or its `models.toml` entry's)."""
    scheduler: Scheduler | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: object) -> object:
        # OpenAI clients send null for "use the default", as OpenAI itself reads it.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @property
    def dimensions(self) -> tuple[int | None, int | None]:
        """Width and height asked for; None: the model's default size."""
        if self.size is None:
            return None, None
        width, _, height = self.size.partition("x")
        return int(width), int(height)


class ImageGenerationRequest(ImageOptions):
    """The JSON body of `POST /v1/images/generations`."""

    stream: bool = False
    """Answer with server-sent events: `partial_images` previews as the image forms, then
    each finished image (`image_generation.partial_image`, `image_generation.completed`)."""
    partial_images: int = Field(default=0, ge=0, le=3)
    """Previews to send while streaming (the last few the worker makes, at most one per
    preview it makes)."""
    style: str | None = None
    moderation: str | None = None


class ImageEditRequest(ImageOptions):
    """The form fields of `POST /v1/images/edits`."""

    stream: Annotated[bool, AfterValidator(_not_streaming)] = False
    partial_images: int | None = None
    """Accepted and ignored (edits do not stream)."""
    image: Annotated[UploadFile, BeforeValidator(_one_upload)]
    """The image to edit (the openai SDK sends a list as `image[]`; one image is taken)."""
    mask: Annotated[UploadFile | None, BeforeValidator(_one_upload)] = None
    """Fully transparent pixels are repainted; the others come back unchanged."""
    input_fidelity: str | None = None
    prompt_strength: float | None = Field(default=None, ge=0, le=1)
    """How far to depart from `image`: default 1 inside a mask, 0.8 without one."""

    @model_validator(mode="before")
    @classmethod
    def _image_list(cls, data: object) -> object:
        if isinstance(data, dict) and "image[]" in data and "image" not in data:
            data = dict(data)
            data["image"] = data.pop("image[]")
        return data

    @property
    def strength(self) -> float:
        if self.prompt_strength is not None:
            return self.prompt_strength
        return 1.0 if self.mask is not None else 0.8


class ImageDatum(BaseModel):
    """One image: `url` or `b64_json` as `response_format` asked, with its seed."""

    model_config = _ANSWER

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str
    seed: int


class ImagesResponse(BaseModel):
    """The answer to a generation or an edit."""

    model_config = _ANSWER

    created: int
    data: list[ImageDatum]
    size: str
    output_format: Literal["png"]
    warnings: list[str] | None = None
    """Beyond OpenAI's shape, only when there are some: what the request did not do though it
    was accepted (a prompt the demo model knows no word of)."""


class _CardHead(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    """The model an alias answers with."""


class ModelCard(ModelFacts, _CardHead):
    """One entry of `/v1/models`: OpenAI's fields, then what the model is and what a request
    leaving fields out gets."""


class ModelList(BaseModel):
    model_config = _ANSWER

    object: Literal["list"]
    data: list[ModelCard]


class PartialImageEvent(BaseModel):
    """A preview while the image forms (stream: true); OpenAI's shape."""

    type: Literal["image_generation.partial_image"]
    b64_json: str
    """A small JPEG: the latents' cheap RGB projection, 1/8 of the image's side."""
    partial_image_index: int
    created_at: int
    size: str
    quality: Literal["auto"]
    background: Literal["opaque"]
    output_format: Literal["jpeg"]


class CompletedEvent(BaseModel):
    """One finished image (stream: true), one event per image; OpenAI's shape."""

    type: Literal["image_generation.completed"]
    b64_json: str
    created_at: int
    size: str
    quality: Literal["auto"]
    background: Literal["opaque"]
    output_format: Literal["png"]
    usage: dict[str, Any]
    """Tokens mean nothing here: zeros, in OpenAI's shape."""


def render_images(job: Job, image_data: ImageData) -> dict[str, Any]:
    """The answer to a generation or an edit: one entry per image, each with its seed."""
    request = job.request
    return {
        "created": int(job.created_at),
        "data": [
            {**image_data(result), "revised_prompt": request.prompt, "seed": result.seed}
            for result in job.outputs
        ],
        "size": f"{request.width}x{request.height}",
        "output_format": "png",
    } | ({"warnings": job.warnings} if job.warnings else {})


def render_model(name: str, spec: ModelSpec, created: int) -> dict[str, Any]:
    """One entry of `/v1/models`; `root` names the model an alias answers with, the other
    fields beyond OpenAI's say what it is and what a request leaving fields out gets."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "sdserve",
        "root": spec.name,
        **describe(spec).model_dump(),
    }


_CODES = {401: "invalid_api_key", 413: "request_too_large", 429: "rate_limit_exceeded"}
"""`code` by status, where the error brings none of its own."""


ErrorType = Literal["invalid_request_error", "requests", "server_error"]


def _error_type(status: int) -> ErrorType:
    if status == 429:
        return "requests"  # what OpenAI's own rate-limit errors say
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAIErrorDetail(BaseModel):
    model_config = _ANSWER

    message: str
    """What went wrong, for a person to read."""
    type: ErrorType
    param: str | None
    """The field at fault, if one is."""
    code: str | None
    """A short machine-readable reason (`model_not_found`, `invalid_api_key`, `timeout`, ...)."""


class OpenAIError(BaseModel):
    """OpenAI's error answer."""

    model_config = _ANSWER

    error: OpenAIErrorDetail


def render_error(error: ApiError) -> JSONResponse:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    detail = OpenAIErrorDetail(
        message=error.message,
        type=_error_type(error.status),
        param=error.errors[0]["field"] if error.errors else None,
        code=error.code or _CODES.get(error.status),
    )
    headers = dict(error.headers)
    if error.status >= 500:
        # The openai SDK retries 5xx by default, queueing the work again; a failed generation
        # fails again, so it is told not to. A call refused for a while (a stopping server's,
        # with Retry-After) may succeed again, and is told so.
        headers["x-should-retry"] = "true" if "Retry-After" in headers else "false"
    return JSONResponse(OpenAIError(error=detail).model_dump(), error.status, headers=headers)
