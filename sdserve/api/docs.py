"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), with their scripts and
styles served from the package's own copies: they work with no internet (FastAPI's defaults load
them from a CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from sdserve.jobs.errors import NotFound

ASSETS_DIR = Path(__file__).parent / "docs_assets"
"""Swagger UI's and ReDoc's files as their packages publish them (README.md there says which
releases, and their licences)."""
ASSETS_URL = "/docs/assets"
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
"""What the pages load, by suffix; the folder's other files (licences) are not served."""
_ASSETS = {path.name: path for path in ASSETS_DIR.iterdir() if path.suffix in _MEDIA_TYPES}
_FAVICON = f"{ASSETS_URL}/favicon-32x32.png"
# Swagger UI would show a badge fetching the document's verdict from swagger.io's validator.
_SWAGGER_PARAMETERS = {"validatorUrl": None}

router = APIRouter(include_in_schema=False)


class AssetNotFound(NotFound):
    code = "asset_not_found"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over /openapi.json: every call, with a form to try it."""
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=_FAVICON,
        swagger_ui_parameters=_SWAGGER_PARAMETERS,
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over /openapi.json: the same document as one reference page."""
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=_FAVICON,
        with_google_fonts=False,
    )


@router.get(ASSETS_URL + "/{name}")
def asset(name: str) -> FileResponse:
    """One of the pages' scripts, styles or icon."""
    path = _ASSETS.get(name)
    if path is None:
        raise AssetNotFound(f"no such documentation asset: {name}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])
