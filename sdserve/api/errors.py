"""Error answers: a message a person can act on, the field at fault, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Scope

from sdserve.api.auth import Unauthorized
from sdserve.jobs.errors import InvalidInput, InvalidInputs, JobError

log = logging.getLogger(__name__)


def _field_path(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "body"  # its loc ends in a character offset, which names no field
    parts = [str(p) for p in error["loc"] if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _rule(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    if kind == "json_invalid":
        return "body is not valid JSON"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    shown = isinstance(value, int | float | bool) or (isinstance(value, str) and len(value) < 60)
    if shown and f"(got {value!r})" not in message:  # a validator may have said it already
        message += f" (got {value!r})"
    return message


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Each bad field with the rule it breaks."""
    return [{"field": _field_path(e), "message": _rule(e)} for e in exc.errors()]


@dataclass(frozen=True)
class ApiError:
    """An error to answer with, before a dialect gives it its wire shape."""

    status: int
    message: str
    errors: list[dict[str, str]] = field(default_factory=list)
    """Each bad field with its rule: `{"field": "input.width", "message": "..."}`."""
    headers: dict[str, str] = field(default_factory=dict)
    code: str | None = None
    """A short machine-readable reason (`JobError.code`), for shapes that carry one."""


class FieldError(BaseModel):
    """One bad field and the rule it breaks."""

    field: str
    """Its dotted path as the client sent it (`input.width`), or `body`."""
    message: str


class ErrorBody(BaseModel):
    """RunPod's and DeepInfra's error answer (and that of the calls outside any dialect)."""

    error: str
    """What went wrong, for a person to read."""
    errors: list[FieldError] | None = None
    """Each bad field with its rule (bad input only)."""


ErrorRenderer = Callable[[ApiError], JSONResponse]
RendererFor = Callable[[str], ErrorRenderer]


def render_default(error: ApiError) -> JSONResponse:
    """RunPod's and DeepInfra's shape: `{"error": message, "errors": [...]}`."""
    body = ErrorBody(error=error.message, errors=field_errors(error))
    return JSONResponse(body.model_dump(exclude_none=True), error.status, headers=error.headers)


def field_errors(error: ApiError) -> list[FieldError] | None:
    """The bad fields of `error` as the answers carry them; None when it names none."""
    return [FieldError.model_validate(e) for e in error.errors] or None


RuleErrors = Callable[[Request, object, set[str]], Awaitable[list[dict[str, str]]]]
"""The model rules a request the schema refused breaks too, given its raw body and the fields
the schema reported (api/rules.py)."""


def _bad_fields(errors: list[dict[str, str]]) -> ApiError:
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ApiError(400, message, errors)


def _api_error(request: Request, exc: Exception) -> ApiError:
    if isinstance(exc, RequestValidationError):
        return _bad_fields(validation_errors(exc))
    if isinstance(exc, InvalidInput):
        problems = exc.problems if isinstance(exc, InvalidInputs) else [exc]
        errors = [{"field": p.field, "message": p.rule} for p in problems]
        return ApiError(exc.status_code, exc.message, errors, code=exc.code)
    if isinstance(exc, JobError):
        retry = exc.retry_after_s
        headers = {} if retry is None else {"Retry-After": str(retry)}
        return ApiError(exc.status_code, exc.message, headers=headers, code=exc.code)
    if isinstance(exc, Unauthorized):
        return ApiError(401, exc.message, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such path: {request.method} {request.url.path}"
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {}))
    log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "internal error; the server log has details")


def renderer_for(shapes: dict[str, ErrorRenderer]) -> RendererFor:
    """For a path, the shape of the dialect whose prefix matches longest (else the default)."""
    ordered = sorted(shapes.items(), key=lambda item: len(item[0]), reverse=True)

    def pick(path: str) -> ErrorRenderer:
        return next((r for prefix, r in ordered if path.startswith(prefix)), render_default)

    return pick


def install_error_handlers(
    app: FastAPI,
    render_for: RendererFor,
    route_path: Callable[[Scope], str],
    rule_errors: RuleErrors | None = None,
) -> None:
    """Answer errors in the shape `render_for` picks for the request's `route_path`: its route's
    template, prefix included, when a route answers it (a RunPod endpoint named `images`,
    /v1/images/run, is RunPod's, though its path starts like OpenAI's), else its path."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        error = _api_error(request, exc)
        if isinstance(exc, RequestValidationError) and rule_errors is not None:
            # Every bad field at once: the model's rules too, for the fields that parsed.
            reported = {e["field"] for e in error.errors}
            more = await rule_errors(request, exc.body, reported)
            if more:
                error = replace(error, **vars(_bad_fields(error.errors + more)))
        return render_for(route_path(request.scope))(error)

    for kind in (RequestValidationError, JobError, Unauthorized, HTTPException, Exception):
        app.add_exception_handler(kind, handle)
