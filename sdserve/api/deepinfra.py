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
    InferenceAnswer,
    render_answer,
    render_queued,
)
from sdserve.api.dialect import Dialect
from sdserve.api.errors import ErrorBody
from sdserve.api.idempotency import OPENAPI_EXTRA, idempotency_of
from sdserve.api.limits import MB
from sdserve.api.openapi import SUBMITTING, ErrorDocs
from sdserve.api.rules import RawFields, pick
from sdserve.canonical import ImageResult
from sdserve.jobs.errors import NotFound
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.requests import RequestDraft
from sdserve.jobs.service import Submission
from sdserve.registry import ModelRegistry

router = APIRouter(tags=["deepinfra"])

NAME = "deepinfra"
SYNC_WAIT_S = 900.0
"""How long a request without a webhook waits for its images before it is cancelled (504)."""
FAILED_STATUS = 500
"""HTTP status of a synchronous answer whose job failed (its message is in `error`)."""
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_FIELDS = {"init_image": "image", "num_outputs": "num_images", "prompt_strength": "strength"}
"""Canonical names of DeepInfra's fields whose names differ."""


_REQUEST_BODY = {
    "required": True,
    "content": {
        kind: {"schema": DeepInfraRequest.model_json_schema()}
        for kind in ("application/json", "multipart/form-data")
    },
}
"""The body as /openapi.json describes it: the route reads it by hand (JSON or a form with
uploads), so FastAPI would not list it."""


def _model_not_found(name: str, registry: ModelRegistry) -> NotFound:
    return NotFound(f"model {name!r} not found; available: {', '.join(registry.names)}")


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
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        error = {"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON", "input": None}
        raise RequestValidationError([error]) from None


def _parse(fields: object) -> DeepInfraRequest:
    try:
        return DeepInfraRequest.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False), body=fields) from None


async def _submit(caller: Caller, model: str, body: DeepInfraRequest) -> Job:
    # DeepInfra has no scheduler field: the model's default runs, as for RunPod.
    draft = RequestDraft.from_wire(body, _FIELDS, model=model)
    how = Submission(
        owner=caller.owner,
        dialect=NAME,
        # The image can be an upload's raw bytes; nothing reads the echo back in this dialect.
        echo=body.model_dump(mode="json", exclude={"image"}, exclude_unset=True),
        fields=_FIELDS,
        webhook=str(body.webhook) if body.webhook else None,
        unknown_model=_model_not_found,
        idempotency=await idempotency_of(caller.request),
    )
    return await caller.ctx.service.submit(draft, how)


def _data_uri(ctx: ApiContext) -> DataUri:
    def encode(result: ImageResult) -> str:
        return "data:image/png;base64," + ctx.image_base64(result)

    return encode


@router.post(
    "/v1/inference/{model:path}",
    response_model=InferenceAnswer,
    response_model_exclude_unset=True,
    openapi_extra={**OPENAPI_EXTRA, "requestBody": _REQUEST_BODY},
    responses={
        **ErrorDocs(ErrorBody).responses(*SUBMITTING, 503, 504),
        FAILED_STATUS: {
            "model": InferenceAnswer,
            "description": "The job failed: `error` says why",
        },
    },
)
async def inference(
    model: str, request: Request, caller: Caller = Depends(get_caller)
) -> dict[str, Any] | JSONResponse:
    """Generate images; with `webhook`, answer at once and POST the answer there when done."""
    body = _parse(await _read_fields(request))
    job = await _submit(caller, model, body)
    if body.webhook is not None:
        return render_queued(job)
    job = await caller.ctx.service.finish_within(caller.owner, job, SYNC_WAIT_S)
    answer = await run_in_threadpool(render_webhook, job, caller.ctx)
    if job.status != JobStatus.COMPLETED:
        return JSONResponse(answer, FAILED_STATUS)
    return answer


def render_webhook(job: Job, ctx: ApiContext) -> dict[str, Any]:
    """The full answer, as a request without a webhook gets it."""
    return render_answer(job, _data_uri(ctx), ctx.service.price(job.endpoint))


def _raw_fields(request: Request, body: object) -> RawFields:
    sizes = pick(body, {"width": "width", "height": "height"})
    return RawFields(request.path_params.get("model", ""), sizes, _FIELDS)


DIALECT = Dialect(
    name=NAME,
    routers=[(router, "")],
    render_webhook=render_webhook,
    raw_readers={"/v1/inference/{model}": _raw_fields},
)
