"""A job followed as it runs, for the dialects' server-sent event streams.

Each reader polls the job (reads shared with other requests, see JobService.read) and its latest
preview a few times a second, and hears of its end at once (the job watcher); any number of
readers, on any of the node's API processes, can follow the same job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sdserve.jobs.errors import JobNotFound
from sdserve.jobs.models import Job, JobStatus, Preview
from sdserve.jobs.service import JobService

POLL_S = 0.2
"""How often a follower looks for new progress and previews (a job's end wakes it at once)."""
PING_S = 15
"""Comment lines sent on a quiet stream, so proxies keep it open."""


@dataclass(frozen=True)
class Update:
    """The job when something changed: its status, its step, or a new `preview`."""

    job: Job
    preview: Preview | None = None


async def follow(service: JobService, owner: str, job: Job) -> AsyncIterator[Update]:
    """Updates of the owner's `job` (read with `JobService.read`) until it ends, the last
    with the final job; a job deleted meanwhile (purged, expired) ends the updates early."""
    seen: tuple[JobStatus, int] | None = None
    preview_step = -1
    while True:
        preview = None
        if job.status == JobStatus.IN_PROGRESS:
            latest = await service.preview(job)
            if latest is not None and latest.step != preview_step:
                preview, preview_step = latest, latest.step
        state = (job.status, job.progress_step)
        if state != seen or preview is not None:
            seen = state
            yield Update(job, preview)
        if job.status.is_final:
            return
        try:
            # A poll's wait, not a call's: the server's stop leaves it to end in its time.
            job = await service.wait_for(owner, job, POLL_S, end_if_stopping=False)
        except JobNotFound:
            return
