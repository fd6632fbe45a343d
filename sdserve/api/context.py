"""What every router needs, built once by the server and reached through `app.state`."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from fastapi import Request

from sdserve.api.auth import KeyChecker
from sdserve.api.ratelimit import RateLimits
from sdserve.canonical import ImageResult
from sdserve.jobs.models import Job
from sdserve.jobs.service import JobService
from sdserve.settings import Settings
from sdserve.storage.base import ImageStore
from sdserve.storage.signing import UrlSigner


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    service: JobService
    keys: KeyChecker
    images: ImageStore
    signer: UrlSigner
    rates: RateLimits

    def base_url(self, request: Request | None) -> str:
        """Where clients reach this server: the setting, else the address they used."""
        if self.settings.public_url:
            return self.settings.public_url
        if request is not None:
            return _base_url(request)
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def inline_images(self) -> bool:
        """Answers carry the images' bytes, read from their store (blocking I/O)."""
        return self.settings.output_format == "base64"

    def image_link(self, job: Job, base_url: str) -> _Linker:
        """How this job's images appear in answers: a signed URL, or inline base64."""
        return _Linker(self, job, base_url)

    def image_url(self, job: Job, result: ImageResult, base_url: str) -> str:
        """A signed URL of one of the job's images, valid until the job expires."""
        expires = job.expires_at or (job.finished_at or 0) + self.settings.result_ttl_s
        return self.key_url(result.key, expires, base_url)

    def key_url(self, key: str, expires_at: float, base_url: str) -> str:
        """The store's own link to an image (presigned), else the API's signed /files link."""
        return self.images.direct_url(key, expires_at) or self.signer.url(base_url, key, expires_at)

    def image_base64(self, result: ImageResult) -> str:
        """The PNG bytes of one image, base64-encoded."""
        return base64.b64encode(self.images.read(result.key) or b"").decode()


@dataclass(frozen=True)
class _Linker:
    ctx: ApiContext
    job: Job
    base_url: str

    def __call__(self, result: ImageResult) -> str:
        if self.ctx.settings.output_format == "base64":
            return self.ctx.image_base64(result)
        return self.ctx.image_url(self.job, result, self.base_url)


_BASE_URLS: dict[tuple[object, ...], str] = {}
"""Base URLs by what they are made of: building one cost a busy server ~5% of its CPU."""
_MAX_BASE_URLS = 256
"""The Host header is the client's to choose: the table is emptied past this many."""


def _base_url(request: Request) -> str:
    scope = request.scope
    key = (
        scope["scheme"],
        request.headers.get("host"),
        scope.get("app_root_path"),
        scope.get("root_path"),
        scope.get("server"),
    )
    url = _BASE_URLS.get(key)
    if url is None:
        if len(_BASE_URLS) >= _MAX_BASE_URLS:
            _BASE_URLS.clear()
        url = _BASE_URLS[key] = str(request.base_url)
    return url


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


@dataclass(frozen=True)
class Caller:
    """An authenticated call: whose it is, and the server context to answer it with."""

    owner: str
    ctx: ApiContext
    request: Request

    def status_link(self, job: Job) -> _Linker:
        return self.ctx.image_link(job, self.ctx.base_url(self.request))


async def admit(request: Request, owner: str) -> Caller:
    """The caller `owner`, once its call is counted against its key's rate limit (429)."""
    ctx = get_context(request)
    await ctx.rates.hit(owner)
    return Caller(owner=owner, ctx=ctx, request=request)


async def get_caller(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller (401 without a valid key, 429 past its
    rate limit)."""
    return await admit(request, get_context(request).keys.owner_of(request))
