"""Keeps running jobs' stop flags fresh and their progress written, off the generation thread.

The denoising loop only reads and writes memory (`Run`): a thread here asks the store, a few
times a second, whether each run is still wanted (cancelled, timed out, handed to another
worker), writes its latest progress and preview (encoded here, not on the denoising thread),
and ends a run past its execution timeout.
"""

from __future__ import annotations

import io
import logging
import threading
import time

from PIL import Image

from sdserve.jobs.models import TIMED_OUT_ERROR, Job, JobStatus, Preview
from sdserve.jobs.store import JobStore

log = logging.getLogger(__name__)

WATCH_EVERY_S = 0.1
"""How often the store is asked and progress written; a cancel takes effect within it."""
PREVIEW_QUALITY = 80
"""JPEG quality of previews: a 64x64 preview (a 512x512 image's) is about 2 KB."""


class Run:
    """One job's run as the worker sees it: what the generation thread has done so far, and
    whether the job is still wanted."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.attempt = job.attempts
        timeout_ms = job.policy.execution_timeout_ms
        started = job.started_at or time.time()
        self.deadline = started + timeout_ms / 1000 if timeout_ms else None
        self.done = 0
        self.total = 0
        self._written = 0
        self._preview: tuple[int, int, Image.Image] | None = None
        self._preview_written = 0
        self.stopped = False
        """Set once the job no longer wants this run's images (read at every step)."""

    def step(self, done: int, total: int) -> None:
        """The generation thread's report: memory only."""
        self.done, self.total = done, total

    def preview(self, done: int, total: int, image: Image.Image) -> None:
        """The generation thread's latest preview of the job's first image: memory only."""
        self._preview = (done, total, image)

    def sync(self, store: JobStore, now: float) -> None:
        """Write new progress (or just read the status), and end the run past its deadline."""
        if self.stopped:
            return
        if self.deadline is not None and now > self.deadline:
            store.finish(self.job.id, self.attempt, JobStatus.TIMED_OUT, now, error=TIMED_OUT_ERROR)
            self.stopped = True
            return
        done, total = self.done, self.total
        if total and done != self._written:
            status = store.add_progress(self.job.id, self.attempt, done, total)
            self._written = done
        else:
            status = store.attempt_status(self.job.id, self.attempt)
        if status != JobStatus.IN_PROGRESS:
            self.stopped = True
            return
        preview = self._preview
        if preview is not None and preview[0] != self._preview_written:
            done, total, image = preview
            jpeg = io.BytesIO()
            image.save(jpeg, format="JPEG", quality=PREVIEW_QUALITY)
            store.set_preview(
                self.job.id, self.attempt, Preview(step=done, total=total, jpeg=jpeg.getvalue())
            )
            self._preview_written = done

    def flush(self, store: JobStore) -> None:
        """Write the last progress the generation reported, if not yet written."""
        if self.total and self.done != self._written:
            store.add_progress(self.job.id, self.attempt, self.done, self.total)
            self._written = self.done


class RunWatch:
    """A daemon thread syncing every followed run each `WATCH_EVERY_S`."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._runs: list[Run] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="run-watch")
        self._thread.start()

    def follow(self, runs: list[Run]) -> None:
        with self._lock:
            self._runs.extend(runs)

    def forget(self, run: Run) -> None:
        """Stop syncing `run` (waits for a sync under way, so none comes after)."""
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._closed.wait(WATCH_EVERY_S):
            with self._lock:
                for run in list(self._runs):
                    try:
                        run.sync(self._store, time.time())
                    except Exception:  # the database is away: keep generating, ask again
                        log.exception("could not check job %s", run.job.id)
