"""DeepInfra inference dialect: POST /v1/inference/{model}, JSON or multipart, sync or webhook."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from sdserve.api.context import ApiContext, Caller, get_caller
from sdserve.api.deepinfra_protocol import (
    DataUri,
    DeepInfraRequest,
    render_answer,
    render_queued,
)
from sdserve.api.dialect import Dialect
from sdserve.api.limits import MB
from sdserve.canonical import ImageResult
from sdserve.jobs.errors import EndpointNotFound, NotFound
from sdserve.jobs.models import Job, JobPolicy, JobStatus
from sdserve.jobs.requests import build_request
from sdserve.registry import ModelSpec

router = APIRouter(tags=["deepinfra"])

NAME = "deepinfra"
SYNC_WAIT_S = 900.0
"""How long a request without a webhook waits for its images before it is cancelled (504)."""
FAILED_STATUS = 500
"""HTTP status of a synchronous answer whose job failed (its message is in `error`)."""
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_IMAGE_FIELDS = ("image", "mask", "width", "height")


def _resolve(caller: Caller, model: str) -> ModelSpec:
    try:
        return caller.ctx.service.resolve_endpoint(model)
    except EndpointNotFound as exc:
        raise NotFound(
            f"model {model!r} not found; available: {', '.join(exc.available)}"
        ) from None


async def _read_fields(request: Request) -> object:
    """The body's fields: a JSON object, or form fields with uploaded files as bytes."""
    if request.headers.get("content-type", "").lower().startswith(_FORM_TYPES):
        async with request.form(max_part_size=10 * MB) as form:
            return {
                name: await value.read() if isinstance(value, UploadFile) else value
                for name, value in form.multi_items()
            }
    try:
        return json.loads(await request.body())
    except ValueError:
        error = {"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON", "input": None}
        raise RequestValidationError([error]) from None


def _parse(fields: object) -> DeepInfraRequest:
    try:
        return DeepInfraRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _submit(caller: Caller, spec: ModelSpec, body: DeepInfraRequest) -> Job:
    ctx = caller.ctx
    images = ctx.image_fields(body.image, None, _IMAGE_FIELDS)
    request = await build_request(
        spec,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.width,
        height=body.height,
        guidance_scale=body.guidance_scale,
        num_inference_steps=body.num_inference_steps,
        num_outputs=body.num_images,
        prompt_strength=body.strength,
        scheduler=None,  # DeepInfra has no such field: the model's default, as for RunPod
        seed=body.seed,
        images=images,
        scheduler_field="scheduler",
        use_compel=body.use_compel,
        lora=body.lora,
        loras_dir=ctx.settings.loras_dir,
    )
    # The image can be an upload's raw bytes; nothing reads the echo back in this dialect.
    echo = body.model_dump(mode="json", exclude={"image"}, exclude_unset=True)
    webhook = str(body.webhook) if body.webhook else None
    submit = ctx.service.submit
    return await run_in_threadpool(
        submit, caller.owner, request, echo, JobPolicy(), webhook, dialect=NAME
    )


def _data_uri(ctx: ApiContext) -> DataUri:
    def encode(result: ImageResult) -> str:
        return "data:image/png;base64," + ctx.image_base64(result)

    return encode


def _price(ctx: ApiContext, job: Job) -> float:
    spec = ctx.service.registry.resolve(job.endpoint)
    return spec.price if spec is not None else 0.0


@router.post("/v1/inference/{model:path}", response_model=None)
async def inference(
    model: str, request: Request, caller: Caller = Depends(get_caller)
) -> dict[str, Any] | JSONResponse:
    """Generate images; with `webhook`, answer at once and POST the answer there when done."""
    spec = _resolve(caller, model)
    body = _parse(await _read_fields(request))
    job = await _submit(caller, spec, body)
    if body.webhook is not None:
        return render_queued(job)
    job = await caller.ctx.service.finish_within(caller.owner, job, SYNC_WAIT_S)
    answer = await run_in_threadpool(render_webhook, job, caller.ctx)
    if job.status != JobStatus.COMPLETED:
        return JSONResponse(answer, FAILED_STATUS)
    return answer


def render_webhook(job: Job, ctx: ApiContext) -> dict[str, Any]:
    """The full answer, as a request without a webhook gets it."""
    return render_answer(job, _data_uri(ctx), _price(ctx, job))


DIALECT = Dialect(name=NAME, routers=[(router, "")], render_webhook=render_webhook)
