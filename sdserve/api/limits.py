"""Request body size limits, enforced before any route parses the body."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdserve.api.errors import ApiError, RendererFor

MB = 1024 * 1024


class BodyLimitMiddleware:
    """Answers 413 (in the path's error shape) when a body exceeds its limit; else replays it."""

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str], int], render_for: RendererFor
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.render_for = render_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message = f"request body is larger than {limit // MB} MB"
        error = ApiError(413, message, [{"field": "body", "message": message}])
        await self.render_for(scope["path"])(error)(scope, receive, send)
