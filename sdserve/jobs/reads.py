"""Reads of many concurrent requests, made in one trip to a thread.

The store's drivers block, so the API reads off its event loop; but a trip to a thread and
back costs more CPU than a job's read itself (waking the thread, handing the GIL over twice).
Under load, a busy API spent most of its time on those trips. Here the first read goes to a
thread at once; the reads asked for while it runs wait and then go together in the next trip,
so a lone request waits no longer than before and a hundred concurrent ones share a few trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

MAX_BATCH = 256
"""Most keys read in one trip, so no trip holds a thread for long."""


class BatchedReads(Generic[K, V]):
    """`read(key)` through `read_many(keys)`, run in a thread, one batch at a time."""

    def __init__(self, read_many: Callable[[list[K]], dict[K, V]], *, taken: bool = False) -> None:
        """`taken`: reading a value uses it up (events marked read), so of requests for the
        same key in one batch the first gets it and the others None, as if they came later."""
        self._read_many = read_many
        self._taken = taken
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._running = False

    async def read(self, key: K) -> V | None:
        """The value of `key`, None when `read_many` found none."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                keys = list(self._waiting)[:MAX_BATCH]
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found = await asyncio.to_thread(self._read_many, keys)
                except Exception as error:  # the store's: each waiting request answers it
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(error)
                    continue
                for key, futures in batch.items():
                    value = found.get(key)
                    for future in futures:
                        if not future.done():
                            future.set_result(value)
                            if self._taken:
                                value = None
        finally:
            self._running = False
