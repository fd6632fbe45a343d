"""Waits for jobs to finish: woken by job events, with a slow poll as the safety net."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from sdserve.jobs.models import JobStatus
from sdserve.jobs.store import JobStore

_POLL_S = 0.25
"""Fallback poll for changes no event reports (e.g. another process's sweeper)."""


class JobWatcher:
    """Resolves waiters when their job reaches a final state (or disappears), and, once the
    server stops taking jobs, while their job is still queued."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._releasable: set[asyncio.Future[None]] = set()
        """The waits that end while their job is queued, once `queued_released`."""
        self.queued_released = False
        """Set once waits on queued jobs end at once: this node's workers start no more."""

    def notify(self, job_id: str) -> None:
        """A job changed state; safe to call from any thread."""
        if self._loop is not None and self._changed is not None and job_id in self._waiters:
            self._loop.call_soon_threadsafe(self._changed.set)

    def release_queued(self) -> None:
        """The server is stopping: end every wait on a job still queued, now and from now on
        (safe to call from any thread, or a signal handler)."""
        self.queued_released = True
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, job_id: str, timeout_s: float, releasable: bool = True) -> bool:
        """Wait until the job is final, or, if `releasable`, while it is still queued once
        `release_queued`; False if `timeout_s` passed first."""
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._changed))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        if releasable:
            self._releasable.add(future)
        self._changed.set()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._releasable.discard(future)
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
        released = self.queued_released
        for job_id in ids:
            status = statuses.get(job_id)
            if status is None or status.is_final:
                ended = self._waiters.pop(job_id, [])
            elif released and status == JobStatus.IN_QUEUE:
                ended = [f for f in self._waiters.get(job_id, []) if f in self._releasable]
            else:
                continue
            for future in ended:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
