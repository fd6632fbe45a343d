"""Per-key request rates, through the `limits` library: in this process, or in Redis so the
limit holds across API nodes."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from sdserve.jobs.errors import RateLimited


class RateLimits:
    """Counts each owner's calls against every configured window; past one, `RateLimited`."""

    def __init__(self, spec: str, storage_uri: str) -> None:
        self._items: list[RateLimitItem] = (
            [] if spec.strip().lower() in ("", "none") else parse_many(spec)
        )
        storage = storage_from_string(f"async+{storage_uri}", key_prefix="sdserve")
        self._limiter = MovingWindowRateLimiter(storage)
        self.per_process = bool(self._items) and storage_uri.startswith("memory")
        """Whether the counts live in this process alone (each API process limits on its own)."""

    async def hit(self, owner: str) -> None:
        """Count one call of `owner`; raise `RateLimited` (with Retry-After) beyond a limit."""
        for item in self._items:
            if not await self._limiter.hit(item, owner):
                stats = await self._limiter.get_window_stats(item, owner)
                wait_s = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(str(item), wait_s)
