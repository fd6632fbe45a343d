"""Input images are decoded, resized and re-encoded in a few processes of their own.

A 7990x7990 PNG is 250 KB on the wire and 190 MB once decoded, and takes seconds of CPU: in
the API's threads, eight at once held the GIL often enough to stall every other request and
raised the API's memory by gigabytes, which the allocator then kept. In a pool of processes,
started when the first image comes and run at a lower CPU priority, the API's event loop is
served first, and at most `processes` images are decoded at once, so the memory they take is
bounded too and goes back to the system with each process's pages; further images wait their
turn in the pool's queue.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from sdserve.jobs.errors import JobError

log = logging.getLogger(__name__)

_NICENESS = 10
"""How much lower the decoding processes' CPU priority is than the API's."""
_PARENT_CHECK_S = 1.0

P = ParamSpec("P")
R = TypeVar("R")


class ImagesUnavailable(JobError):
    """A decoding process died under the request (killed, or out of memory)."""

    status_code = 503


def _start_process(parent_pid: int) -> None:
    """In each pool process: a lower CPU priority, and an exit once the API process is gone
    (killed with `kill -9`, it could not stop its pool; the pool's queue never closes)."""
    os.nice(_NICENESS)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class ImagePool:
    """Runs image work in up to `processes` spawned processes, started at first use."""

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`work(*args)` in a pool process; its result (or exception) as if called here."""
        pool = self._pool or self._start()
        try:
            return await asyncio.wrap_future(pool.submit(work, *args, **kwargs))
        except BrokenProcessPool:
            # The next image gets a fresh pool; this one's requests cannot be told apart.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            log.error("an image decoding process died; starting new ones")
            raise ImagesUnavailable(
                "the server could not process the input image (its decoder stopped);"
                " try again, or send a smaller image"
            ) from None

    def _start(self) -> ProcessPoolExecutor:
        self._pool = ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process,
            initargs=(os.getpid(),),
        )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
