"""ModelsLab / stablediffusionapi dialect: /api/v3, /api/v4/dreambooth and /api/v6/images."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import JsonValue
from starlette.concurrency import run_in_threadpool

from sdserve.api.auth import Unauthorized, key_from_header
from sdserve.api.context import ApiContext, Caller, admit, get_context
from sdserve.api.dialect import Dialect
from sdserve.api.idempotency import OPENAPI_EXTRA, idempotency_of
from sdserve.api.modelslab_protocol import (
    Answer,
    ModelsLabError,
    ModelsLabFetch,
    ModelsLabRequest,
    render_error,
    render_failure,
    render_processing,
    render_success,
)
from sdserve.api.openapi import AUTHENTICATED, ErrorDocs
from sdserve.api.rules import RawFields, pick
from sdserve.jobs.errors import InvalidInput, JobNotFound
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.requests import RequestDraft
from sdserve.jobs.service import Submission
from sdserve.registry import DEFAULT_MODEL, ModelRegistry, summary
from sdserve.storage.base import image_key

NAME = "modelslab"

Api = Literal["v3", "v4", "v6"]
Mode = Literal["any", "img2img", "inpaint"]
"""`any`: txt2img, img2img with init_image, inpainting with mask_image too (as dreambooth does)."""

GENERATION_PATHS: list[tuple[str, Api, Mode]] = [
    ("/api/v3/text2img", "v3", "any"),
    ("/api/v3/img2img", "v3", "img2img"),
    ("/api/v3/inpaint", "v3", "inpaint"),
    ("/api/v4/dreambooth", "v4", "any"),
    ("/api/v4/dreambooth/img2img", "v4", "img2img"),
    ("/api/v4/dreambooth/inpaint", "v4", "inpaint"),
    ("/api/v6/images/text2img", "v6", "any"),
    ("/api/v6/images/img2img", "v6", "img2img"),
    ("/api/v6/images/inpaint", "v6", "inpaint"),
]
FETCH_PATHS: dict[Api, str] = {
    "v3": "/api/v3/fetch",
    "v4": "/api/v4/dreambooth/fetch",
    "v6": "/api/v6/images/fetch",
}
"""Each serves `POST {path}/{id}` and `POST {path}` with `request_id` in the body."""

FUTURE_LINK_GRACE_S = 24 * 3600.0
"""future_links stay signed this long after submission plus the retention: a queued job may
wait a while, and a link only ever serves a file while the job's images exist."""
UNKNOWN_ETA_S = 5.0
"""The eta given before a job has run a step (nothing to extrapolate from yet)."""

_FIELDS = {"mask": "mask_image", "num_outputs": "samples", "blank_nsfw": "safety_checker",
           "lora": "lora_model", "lora_scale": "lora_strength"}  # fmt: skip
"""Canonical names of ModelsLab's fields whose names differ."""

router = APIRouter(tags=["modelslab"])
_ANSWERS: dict[str, Any] = {"response_model": Answer, "response_model_exclude_unset": True}
"""Every route answers success, processing or error; track_id only where the request had one."""
_ERRORS = ErrorDocs(ModelsLabError)
# Bad input answers HTTP 200 (the error shape is among the 200 answers), so no 400 here.
_GENERATION_ERRORS = _ERRORS.responses(*AUTHENTICATED, 404, 409, 413, 422)
"""404: the job was deleted while the call waited for it (purged through another dialect)."""
_FETCH_ERRORS = _ERRORS.responses(*AUTHENTICATED, 413)


async def _body_key(request: Request) -> str | None:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # the body's own validation names the fault
        return None
    key = body.get("key") if isinstance(body, dict) else None
    if isinstance(key, str | int) and not isinstance(key, bool) and str(key).strip():
        return str(key).strip()
    return None


async def get_key_caller(request: Request) -> Caller:
    """The caller whose `key` is in the JSON body (or an Authorization header); 401 otherwise."""
    ctx = get_context(request)
    key = await _body_key(request) or key_from_header(request.headers.get("authorization"))
    if key is None and not ctx.keys.open:
        raise Unauthorized('missing API key: send "key" in the JSON body')
    return await admit(request, ctx.keys.owner(key))


def _model_not_found(name: str, registry: ModelRegistry) -> InvalidInput:
    models = "; ".join(summary(spec) for spec in registry.models)
    return InvalidInput(
        "model_id",
        f"no model {name!r}; available: {models} (names and aliases: {', '.join(registry.names)})",
    )


def _require_images(body: ModelsLabRequest, mode: Mode) -> None:
    if mode != "any" and not body.init_image:
        raise InvalidInput("init_image", f"field required for {mode}")
    if mode == "inpaint" and not body.mask_image:
        raise InvalidInput("mask_image", "field required for inpaint")


def enhance(prompt: str, suffix: str) -> str:
    """The prompt with the configured suffix appended after a comma (unchanged if none)."""
    addition = suffix.strip().lstrip(",").strip()
    return f"{prompt.rstrip()}, {addition}" if addition else prompt


async def _submit(caller: Caller, body: ModelsLabRequest, api: Api, mode: Mode) -> Job:
    _require_images(body, mode)
    suffix = caller.ctx.settings.enhance_prompt_suffix if body.enhance_prompt else ""
    draft = RequestDraft.from_wire(
        body,
        _FIELDS,
        model=body.model_id or DEFAULT_MODEL,
        prompt=enhance(body.prompt, suffix),
        prompt_strength=body.effective_strength,
        scheduler_fallback=True,
    )
    extra: dict[str, JsonValue] = {
        "api": api,
        "base64": body.base64,
        "enhance_prompt": body.enhance_prompt,
    }
    if body.track_id is not None:
        extra["track_id"] = body.track_id
    how = Submission(
        owner=caller.owner,
        dialect=NAME,
        echo=body.model_dump(mode="json", exclude_unset=True, exclude={"key"}),
        fields=_FIELDS,
        webhook=str(body.webhook) if body.webhook else None,
        extra=extra,
        unknown_model=_model_not_found,
        model_rules=lambda spec: body.check_dimensions(spec.rules.size),
        idempotency=await idempotency_of(caller.request),
    )
    return await caller.ctx.service.submit(draft, how)


def estimate_eta(job: Job, now: float) -> float:
    """Seconds until the job is likely done, extrapolated from the steps run so far."""
    if job.started_at is None or job.progress_step <= 0 or not job.progress_total:
        return UNKNOWN_ETA_S
    per_step = (now - job.started_at) / job.progress_step
    return max(0.0, per_step * (job.progress_total - job.progress_step))


def _output(ctx: ApiContext, job: Job, base_url: str) -> list[str]:
    if job.extra.get("base64"):
        return [ctx.image_base64(result) for result in job.outputs]
    link = ctx.image_link(job, base_url)
    return [link(result) for result in job.outputs]


def _future_links(ctx: ApiContext, job: Job, base_url: str) -> list[str]:
    ttl_s = job.policy.ttl_ms / 1000 if job.policy.ttl_ms else ctx.settings.result_ttl_s
    expires = job.created_at + FUTURE_LINK_GRACE_S + ttl_s
    keys = [image_key(job.id, i) for i in range(job.request.num_outputs)]
    return [ctx.key_url(key, expires, base_url) for key in keys]


def _fetch_url(job: Job, base_url: str) -> str:
    api = job.extra.get("api")
    path = next((p for name, p in FETCH_PATHS.items() if name == api), FETCH_PATHS["v3"])
    return f"{base_url.rstrip('/')}{path}/{job.number}"


def render_answer(ctx: ApiContext, job: Job, base_url: str) -> dict[str, Any]:
    """success with the images, error if the job failed, else processing with where to look."""
    if job.status == JobStatus.COMPLETED:
        return render_success(job, _output(ctx, job, base_url))
    if job.status.is_final:
        return render_failure(job)
    eta = estimate_eta(job, time.time())
    return render_processing(job, eta, _fetch_url(job, base_url), _future_links(ctx, job, base_url))


async def _answer(caller: Caller, job: Job) -> dict[str, Any]:
    # Off the event loop: base64 answers read the images from their store.
    base_url = caller.ctx.base_url(caller.request)
    return await run_in_threadpool(render_answer, caller.ctx, job, base_url)


def _generation_route(api: Api, mode: Mode) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def generate(
        body: ModelsLabRequest, caller: Caller = Depends(get_key_caller)
    ) -> dict[str, Any]:
        job = await _submit(caller, body, api, mode)
        job = await caller.ctx.service.wait_for(
            caller.owner, job, caller.ctx.settings.modelslab_wait_s
        )
        return await _answer(caller, job)

    generate.__doc__ = (
        f"Generate images ({mode}); answers `success` when done within the wait,"
        " else `processing` with fetch_result and future_links."
    )
    return generate


async def _fetch(caller: Caller, number: int | None, field: str) -> dict[str, Any]:
    if number is None:
        raise InvalidInput(field, "field required")
    job = None
    try:
        # Stores keep 64-bit signed numbers: a larger one names no request (and would overflow)
        if 0 < number < 2**63:
            job = await run_in_threadpool(caller.ctx.service.get_by_number, caller.owner, number)
    except JobNotFound:
        pass
    if job is None or job.dialect != NAME:
        raise InvalidInput(field, f"no request {number} (unknown, expired, or another key's)")
    return await _answer(caller, job)


async def fetch_by_path(
    request_id: int,
    body: ModelsLabFetch | None = None,
    caller: Caller = Depends(get_key_caller),
) -> dict[str, Any]:
    """A request's state: success with its images, processing, or error."""
    return await _fetch(caller, request_id, "request_id")


async def fetch_by_body(
    body: ModelsLabFetch, caller: Caller = Depends(get_key_caller)
) -> dict[str, Any]:
    """The same, with `request_id` in the body (the form v4 and v6 clients use)."""
    return await _fetch(caller, body.request_id, "request_id")


for _path, _api, _mode in GENERATION_PATHS:
    router.add_api_route(
        _path,
        _generation_route(_api, _mode),
        methods=["POST"],
        responses=_GENERATION_ERRORS,
        openapi_extra=OPENAPI_EXTRA,
        **_ANSWERS,
    )
for _fetch_path in FETCH_PATHS.values():
    router.add_api_route(
        _fetch_path + "/{request_id}",
        fetch_by_path,
        methods=["POST"],
        responses=_FETCH_ERRORS,
        **_ANSWERS,
    )
    router.add_api_route(
        _fetch_path, fetch_by_body, methods=["POST"], responses=_FETCH_ERRORS, **_ANSWERS
    )


def render_webhook(job: Job, ctx: ApiContext) -> dict[str, Any]:
    """The webhook payload: the answer fetch gives for the finished job, with its track_id."""
    return render_answer(ctx, job, ctx.base_url(None))


def _raw_fields(request: Request, body: object) -> RawFields:
    model = body.get("model_id") if isinstance(body, dict) else None
    sizes = pick(body, {"width": "width", "height": "height"})
    return RawFields(model if isinstance(model, str) else DEFAULT_MODEL, sizes, _FIELDS)


DIALECT = Dialect(
    name=NAME,
    routers=[(router, "")],
    render_webhook=render_webhook,
    error_shapes={"/api/": render_error},
    raw_readers={path: _raw_fields for path, _, _ in GENERATION_PATHS},
)
