"""Waits for jobs to finish: woken by job events, with a slow poll as the safety net."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from sdserve.jobs.store import JobStore

_POLL_S = 0.25
"""Fallback poll for changes no event reports (e.g. another process's sweeper)."""


class JobWatcher:
    """Resolves waiters when their job reaches a final state (or disappears)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def notify(self, job_id: str) -> None:
        """A job changed state; safe to call from any thread."""
        if self._loop is not None and self._changed is not None and job_id in self._waiters:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, job_id: str, timeout_s: float) -> bool:
        """Wait until the job is final; False if `timeout_s` passed first."""
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._changed))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        self._changed.set()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(job_id, None)

    async def _run(self, changed: asyncio.Event) -> None:
        while True:
            if self._waiters:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), _POLL_S)
            else:
                await changed.wait()
            changed.clear()
            await self._resolve()

    async def _resolve(self) -> None:
        # One indexed read of the waited-on ids; off the event loop, as PostgreSQL's is a
        # round trip.
        ids = list(self._waiters)
        statuses = await asyncio.to_thread(self._store.statuses, ids) if ids else {}
        for job_id in ids:
            status = statuses.get(job_id)
            if status is None or status.is_final:
                for future in self._waiters.pop(job_id, []):
                    if not future.done():
                        future.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
