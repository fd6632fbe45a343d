"""Periodic housekeeping: overdue runs time out, orphaned runs re-queue, expired jobs go."""

from __future__ import annotations

import asyncio
import logging
import time

from sdserve.jobs.losses import worker_silent
from sdserve.jobs.store import JobStore
from sdserve.settings import Settings
from sdserve.storage.base import ImageStore

log = logging.getLogger(__name__)


def sweep(store: JobStore, images: ImageStore, settings: Settings) -> None:
    """One pass of housekeeping."""
    now = time.time()
    for job_id in store.time_out_overdue(now):
        log.info("job %s timed out", job_id)
    silent = worker_silent(settings.heartbeat_timeout_s)
    stale_before = now - settings.heartbeat_timeout_s
    for job_id in store.requeue_orphans(None, stale_before, settings.max_attempts, now, silent):
        log.warning("job %s lost its worker's heartbeat; re-queued", job_id)
    for job in store.delete_expired(now):
        images.delete_job(job.id)


async def run_sweeper(store: JobStore, images: ImageStore, settings: Settings) -> None:
    """Sweep every `sweep_interval_s` until cancelled."""
    while True:
        try:
            await asyncio.to_thread(sweep, store, images, settings)
        except Exception:
            log.exception("sweep failed; trying again later")
        await asyncio.sleep(settings.sweep_interval_s)
