"""The web playground: `GET /` and its assets, shipped in the package (sdserve/web/).

The page is static: it reaches the server only through the public API, with the key the user
types in, so serving it needs no key and reveals nothing."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from sdserve.jobs.errors import NotFound

router = APIRouter()

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
"""The page's files, as the wheel carries them (package data)."""

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""Set here, not guessed: browsers refuse a module script served with a type other than
JavaScript's, and the system's MIME table differs between machines."""
_HEADERS = {"Cache-Control": "no-cache"}
"""Revalidated on each load (by ETag), so a new release's page is never mixed with old code."""


def _assets() -> dict[str, Path]:
    """Every servable file by its path under /playground/ (read once: the package is fixed)."""
    return {
        path.relative_to(WEB_DIR).as_posix(): path
        for path in sorted(WEB_DIR.rglob("*"))
        if path.suffix in _MEDIA_TYPES and path.is_file()
    }


_ASSETS = _assets()


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The playground page."""
    return _file(WEB_DIR / "index.html")


@router.get("/playground/{asset:path}", include_in_schema=False)
def asset(asset: str) -> FileResponse:
    """One of the page's scripts or styles (only files shipped in sdserve/web/)."""
    path = _ASSETS.get(asset)
    if path is None:
        raise NotFound(f"no playground file {asset!r}")
    return _file(path)
