"""OpenAI images dialect: /v1/images/generations, /v1/images/edits and /v1/models."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form
from starlette.concurrency import run_in_threadpool

from sdserve.api.context import Caller, get_caller
from sdserve.api.dialect import Dialect
from sdserve.api.openai_protocol import (
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageOptions,
    ResponseFormat,
    render_error,
    render_images,
    render_model,
)
from sdserve.canonical import ImageResult
from sdserve.jobs.errors import JobError, NotFound
from sdserve.jobs.models import Job, JobPolicy, JobStatus
from sdserve.jobs.requests import ImageFields, build_request
from sdserve.registry import ModelSpec

router = APIRouter(tags=["openai"])

NAME = "openai"
SYNC_WAIT_S = 540.0
"""Longest a call waits for its images, queue included, before the job is cancelled and the
call answers 504: under the openai SDK's 600 s timeout, so the client hears why."""
_IMAGE_FIELDS = ("image", "mask", "size", "size")
_STARTED = int(time.time())
"""`created` of every model in /v1/models: when this server started."""


class ModelNotFound(NotFound):
    """An unknown `model`; the message lists the names that exist."""

    code = "model_not_found"

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"model {name!r} not found; available: {', '.join(available)}")


class GenerationFailed(JobError):
    """The job ended without images (FAILED, or cancelled by its owner through another API)."""

    status_code = 500
    code = "generation_failed"


def _resolve(caller: Caller, name: str) -> ModelSpec:
    registry = caller.ctx.service.registry
    spec = registry.resolve(name)
    if spec is None:
        raise ModelNotFound(name, registry.names)
    return spec


async def _submit(
    caller: Caller, body: ImageOptions, images: ImageFields, prompt_strength: float
) -> Job:
    spec = _resolve(caller, body.model)
    width, height = body.dimensions
    request = await build_request(
        spec,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.num_inference_steps,
        num_outputs=body.n,
        prompt_strength=prompt_strength,
        scheduler=body.scheduler,
        seed=body.seed,
        images=images,
        scheduler_field="scheduler",
    )
    echo = body.model_dump(mode="json", exclude={"image", "mask"}, exclude_unset=True)
    submit = caller.ctx.service.submit
    return await run_in_threadpool(
        submit, caller.owner, request, echo, JobPolicy(), None, dialect=NAME
    )


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


def _images(caller: Caller, image: bytes | None, mask: bytes | None) -> ImageFields:
    return caller.ctx.image_fields(image, mask, _IMAGE_FIELDS, mask_from_alpha=True)


@router.post("/v1/images/generations")
async def create_image(
    body: ImageGenerationRequest, caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """Generate `n` images from a prompt; answers when they are ready."""
    # prompt_strength only matters with an input image; txt2img ignores it.
    job = await _submit(caller, body, _images(caller, None, None), prompt_strength=1.0)
    return await _answer(caller, job, body.response_format)


@router.post("/v1/images/edits")
async def edit_image(
    form: Annotated[ImageEditRequest, Form()], caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """Repaint an image where its mask is transparent (the whole image without a mask)."""
    image = await form.image.read()
    mask = await form.mask.read() if form.mask is not None else None
    job = await _submit(caller, form, _images(caller, image, mask), form.strength)
    return await _answer(caller, job, form.response_format)


@router.get("/v1/models")
def list_models(caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """Every model name and alias images can be asked of."""
    registry = caller.ctx.service.registry
    data = [
        render_model(name, spec, _STARTED)
        for spec in registry.models
        for name in (spec.name, *spec.aliases)
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model:path}")
def retrieve_model(model: str, caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    """One model name or alias (404 naming those that exist)."""
    return render_model(model, _resolve(caller, model), _STARTED)


DIALECT = Dialect(
    name=NAME,
    routers=[(router, "")],
    error_shapes={"/v1/images": render_error, "/v1/models": render_error},
)
