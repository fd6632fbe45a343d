"""The `Idempotency-Key` header of submitting calls: the key, and a hash of the request it
came with, for `JobService.submit` to return the same job for the same request."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.service import IdempotentRequest

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
"""Visible ASCII, 1 to 255 characters: a UUID, a ULID, any client's own scheme."""

OPENAPI_EXTRA: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER,
            "in": "header",
            "required": False,
            "description": (
                "Send the same request again with the same key within the retention"
                " (SDSERVE_IDEMPOTENCY_TTL_S, 24 h) to get the job the first one made,"
                " not a new one; the same key with another request is a 422."
            ),
            "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
        }
    ]
}
"""`openapi_extra=` of each submitting route: the header, in /openapi.json."""


async def idempotency_of(request: Request) -> IdempotentRequest | None:
    """The request's Idempotency-Key with the hash of what it asks, or None without one."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise InvalidInput(HEADER, "must be 1 to 255 visible ASCII characters")
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        await _hash_form(request, digest)
    else:
        digest.update(_canonical(await request.body()))
    return IdempotentRequest(key=key, request_hash=digest.hexdigest(), header=HEADER)


def _canonical(body: bytes) -> bytes:
    """A JSON body with its keys sorted and spacing removed: the same request sent again by
    another client library hashes the same. Anything else is taken as it is."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


async def _hash_form(request: Request, digest: hashlib._Hash) -> None:
    """A form's fields and files by name (its boundary differs each time it is sent)."""
    form = await request.form()
    for name, value in sorted(form.multi_items(), key=lambda item: item[0]):
        digest.update(name.encode() + b"\0")
        if isinstance(value, UploadFile):
            digest.update(await value.read())
            await value.seek(0)
        else:
            digest.update(value.encode())
        digest.update(b"\0")
