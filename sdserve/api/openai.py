"""OpenAI images dialect: /v1/images/generations, /v1/images/edits and /v1/models, also under
DeepInfra's OpenAI-compatible base /v1/openai."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from sdserve.api.context import Caller, get_caller
from sdserve.api.dialect import Dialect
from sdserve.api.events import PING_S, follow
from sdserve.api.idempotency import OPENAPI_EXTRA, idempotency_of
from sdserve.api.openai_protocol import (
    SIZE,
    CompletedEvent,
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageOptions,
    ImagesResponse,
    ModelCard,
    ModelList,
    OpenAIError,
    OpenAIErrorDetail,
    PartialImageEvent,
    ResponseFormat,
    render_error,
    render_images,
    render_model,
)
from sdserve.api.openapi import AUTHENTICATED, SUBMITTING, ErrorDocs
from sdserve.api.rules import RawFields
from sdserve.canonical import ImageResult
from sdserve.jobs.errors import JobError, NotFound
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.requests import RequestDraft
from sdserve.jobs.service import Submission
from sdserve.registry import DEFAULT_MODEL, ModelRegistry

router = APIRouter(tags=["openai"])
_OMIT_UNSET: dict[str, Any] = {"response_model_exclude_unset": True}
"""An image carries `url` or `b64_json`, never both."""
_ERRORS = ErrorDocs(OpenAIError)
_GENERATES = _ERRORS.responses(*SUBMITTING, 500, 503, 504)
"""500: the job failed; 503: the server began to stop before it started; 504: it did not
finish within SYNC_WAIT_S."""

NAME = "openai"
SYNC_WAIT_S = 540.0
"""Longest a call waits for its images, queue included, before the job is cancelled and the
call answers 504: under the openai SDK's 600 s timeout, so the client hears why."""
_FIELDS = {"init_image": "image", "num_outputs": "n", "width": "size", "height": "size"}
"""Canonical names of OpenAI's fields whose names differ."""
_STARTED = int(time.time())
"""`created` of every model in /v1/models: when this server started."""


class ModelNotFound(NotFound):
    """An unknown `model`; the message lists the names that exist."""

    code = "model_not_found"

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"model {name!r} not found; available: {', '.join(available)}")

    @classmethod
    def of(cls, name: str, registry: ModelRegistry) -> ModelNotFound:
        return cls(name, registry.names)


class GenerationFailed(JobError):
    """The job ended without images (FAILED, or cancelled by its owner through another API)."""

    status_code = 500
    code = "generation_failed"


async def _submit(caller: Caller, body: ImageOptions, **given: object) -> Job:
    width, height = body.dimensions
    draft = RequestDraft.from_wire(body, _FIELDS, width=width, height=height, **given)
    how = Submission(
        owner=caller.owner,
        dialect=NAME,
        echo=body.model_dump(mode="json", exclude={"image", "mask"}, exclude_unset=True),
        fields=_FIELDS,
        unknown_model=ModelNotFound.of,
        idempotency=await idempotency_of(caller.request),
    )
    return await caller.ctx.service.submit(draft, how)


def _image_data(caller: Caller, job: Job, response_format: ResponseFormat) -> ImageData:
    ctx = caller.ctx
    if response_format == "b64_json":
        return lambda result: {"b64_json": ctx.image_base64(result)}
    base_url = ctx.base_url(caller.request)

    def url(result: ImageResult) -> dict[str, str]:
        return {"url": ctx.image_url(job, result, base_url)}

    return url


async def _answer(caller: Caller, job: Job, response_format: ResponseFormat) -> dict[str, Any]:
    """Wait for the job and answer with its images, or with why there are none."""
    service = caller.ctx.service
    job = await service.finish_within(caller.owner, job, SYNC_WAIT_S)
    if job.status != JobStatus.COMPLETED:
        reason = job.error or f"the job ended {job.status.value}"
        raise GenerationFailed(f"image generation failed: {reason}")
    image_data = _image_data(caller, job, response_format)
    return await run_in_threadpool(render_images, job, image_data)


_STREAM_DOC = """With `stream: true`: server-sent events in OpenAI's shapes, each event's
`data` one of these JSON objects: up to `partial_images` previews while the image forms
(`image_generation.partial_image`), then one `image_generation.completed` per image; a failed
job ends the stream with `{"error": {...}}`."""


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    responses={
        **_GENERATES,
        200: {
            "description": "The images; with `stream: true`, events (see the 200 answer's "
            "text/event-stream).",
            "content": {
                "text/event-stream": {
                    "schema": {
                        "description": _STREAM_DOC,
                        "anyOf": [
                            PartialImageEvent.model_json_schema(),
                            CompletedEvent.model_json_schema(),
                        ],
                    }
                }
            },
        },
    },
    openapi_extra=OPENAPI_EXTRA,
    **_OMIT_UNSET,
)
async def create_image(
    body: ImageGenerationRequest, caller: Caller = Depends(get_caller)
) -> dict[str, Any] | EventSourceResponse:
    """Generate `n` images from a prompt; answers when they are ready, or, with `stream:
    true`, as server-sent events: previews while they form, then each image."""
    # prompt_strength only matters with an input image; txt2img ignores it.
    job = await _submit(caller, body, prompt_strength=1.0)
    if body.stream:
        return EventSourceResponse(_stream(caller, job, body.partial_images), ping=PING_S)
    return await _answer(caller, job, body.response_format)


async def _stream(caller: Caller, job: Job, partial_images: int) -> AsyncIterator[ServerSentEvent]:
    """OpenAI's image stream: `partial_images` previews spread over the run (the first past
    1/(n+1) of the steps, the next past 2/(n+1), ...), then every image."""
    sent = 0
    async for update in follow(caller.ctx.service, caller.owner, job):
        job = update.job
        preview = update.preview
        if (
            preview is not None
            and sent < partial_images
            and preview.step * (partial_images + 1) >= preview.total * (sent + 1)
        ):
            event = PartialImageEvent(
                type="image_generation.partial_image",
                b64_json=base64.b64encode(preview.jpeg).decode(),
                partial_image_index=sent,
                **_event_fields(job),
                output_format="jpeg",
            )
            yield ServerSentEvent(event.model_dump_json(), event=event.type)
            sent += 1
    if job.status != JobStatus.COMPLETED:
        # The openai SDK raises an APIError for an event whose data holds `error`.
        message = f"image generation failed: {job.error or f'the job ended {job.status.value}'}"
        detail = OpenAIErrorDetail(
            message=message, type="server_error", param=None, code=GenerationFailed.code
        )
        yield ServerSentEvent(OpenAIError(error=detail).model_dump_json(), event="error")
        return
    for result in job.outputs:
        completed = CompletedEvent(
            type="image_generation.completed",
            b64_json=await run_in_threadpool(caller.ctx.image_base64, result),
            **_event_fields(job),
            output_format="png",
            usage=_NO_TOKENS,
        )
        yield ServerSentEvent(completed.model_dump_json(), event=completed.type)


_NO_TOKENS = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def _event_fields(job: Job) -> dict[str, Any]:
    request = job.request
    return {
        "created_at": int(job.created_at),
        "size": f"{request.width}x{request.height}",
        "quality": "auto",
        "background": "opaque",
    }


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    responses=_GENERATES,
    openapi_extra=OPENAPI_EXTRA,
    **_OMIT_UNSET,
)
async def edit_image(
    form: Annotated[ImageEditRequest, Form(media_type="multipart/form-data")],
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    """Repaint an image where its mask is transparent (the whole image without a mask)."""
    image = await form.image.read()
    mask = await form.mask.read() if form.mask is not None else None
    job = await _submit(
        caller,
        form,
        init_image=image,
        mask=mask,
        mask_convention="alpha",
        prompt_strength=form.strength,
    )
    return await _answer(caller, job, form.response_format)


@router.get("/models", response_model=ModelList, responses=_ERRORS.responses(*AUTHENTICATED))
def list_models(caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """Every model name and alias images can be asked of."""
    data = [
        render_model(name, spec, _STARTED)
        for spec in caller.ctx.service.models()
        for name in (spec.name, *spec.aliases)
    ]
    return {"object": "list", "data": data}


@router.get(
    "/models/{model:path}",
    response_model=ModelCard,
    responses=_ERRORS.responses(*AUTHENTICATED, 404),
)
def retrieve_model(model: str, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """One model name or alias (404 naming those that exist)."""
    spec = caller.ctx.service.resolve_endpoint(model, ModelNotFound.of)
    return render_model(model, spec, _STARTED)


def _raw_fields(request: Request, body: object) -> RawFields:
    given = body if isinstance(body, dict) else {}
    model = given.get("model")
    size = given.get("size")
    values = {"scheduler": given.get("scheduler")}
    if isinstance(size, str) and (match := SIZE.fullmatch(size.strip())) is not None:
        values |= {"width": int(match[1]), "height": int(match[2])}
    return RawFields(model if isinstance(model, str) else DEFAULT_MODEL, values, _FIELDS)


BASES = ("/v1", "/v1/openai")
"""Where the calls are served: OpenAI's base, and DeepInfra's OpenAI-compatible one."""

DIALECT = Dialect(
    name=NAME,
    routers=[(router, base) for base in BASES],
    error_shapes={base + path: render_error for base in BASES for path in ("/images", "/models")},
    raw_readers={base + "/images/generations": _raw_fields for base in BASES},
)
