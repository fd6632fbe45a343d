"""Serves stored images behind signed, expiring URLs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from sdserve.api.context import ApiContext, get_context
from sdserve.jobs.errors import NotFound

router = APIRouter()


@router.get("/files/{key:path}", include_in_schema=False)
def get_file(
    key: str,
    expires: int = Query(),
    sig: str = Query(),
    ctx: ApiContext = Depends(get_context),
) -> Response:
    """An image, if the signature is valid and not expired (404 otherwise, revealing nothing)."""
    data = ctx.images.read(key) if ctx.signer.verify(key, expires, sig) else None
    if data is None:
        raise NotFound("no such image, or its link has expired")
    return Response(data, media_type="image/png")
