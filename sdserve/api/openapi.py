"""What /openapi.json says a call answers besides its success: each error status it can send,
with its dialect's error body, so a client generated from the document knows every answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

Responses = dict[int | str, dict[str, Any]]
"""FastAPI's `responses=`: status -> its model, description and headers."""

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "`Bearer`: how to send a key", "schema": {"type": "string"}}
}

ERROR_STATUSES: dict[int, str] = {
    400: "A field breaks a rule: the body names the field and the rule",
    401: "The API key is missing or not one of the server's",
    404: "No such endpoint, model or job (or the job is another key's)",
    409: "The job's state does not allow the call, or the Idempotency-Key's job has expired",
    413: "The body is larger than the limit (20 MB for runsync, 10 MB otherwise)",
    422: "The Idempotency-Key was sent before with a different request",
    429: "This key sends too many requests, or the queue is full: Retry-After says when to retry",
    500: "The job failed: the body says why",
    503: "The server began to stop before the job started; it was cancelled: Retry-After says"
    " when to send it again",
    504: "The job did not finish in time; it was cancelled",
}
"""Every error status sdserve sends, and when."""

AUTHENTICATED = (401, 429)
"""Any call that checks a key: the key may be wrong, and its request rate is limited."""
WITH_BODY = (400, 413)
"""Any call that reads a body: a field may break a rule, the body may be too large."""
SUBMITTING = (*AUTHENTICATED, *WITH_BODY, 404, 409, 422)
"""A call that queues a job: an unknown model or endpoint (404), an Idempotency-Key whose job
expired (409) or reused with another request (422), a full queue or quota (429)."""


@dataclass(frozen=True)
class ErrorDocs:
    """A dialect's error body, documented for the statuses each of its calls sends."""

    body: type[BaseModel]

    def responses(self, *statuses: int) -> Responses:
        """`responses=` for a route that answers `statuses` (besides its success)."""
        return {status: self._response(status) for status in sorted(set(statuses))}

    def _response(self, status: int) -> dict[str, Any]:
        response: dict[str, Any] = {"model": self.body, "description": ERROR_STATUSES[status]}
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        elif status == 401:
            response["headers"] = _WWW_AUTHENTICATE
        return response


def install_openapi(app: FastAPI) -> None:
    """Serve the document without FastAPI's automatic 422 answers: bad input is a 400 in the
    dialect's shape (ModelsLab's at 200), and each route lists its own statuses."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for item in document.get("paths", {}).values():
                for operation in item.values():
                    responses = operation.get("responses", {})
                    if _is_validation_error(responses.get("422")):
                        del responses["422"]
            schemas = document.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_validation_error(response: dict[str, Any] | None) -> bool:
    """Whether `response` is FastAPI's own 422 (a route's declared 422 is kept)."""
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))
