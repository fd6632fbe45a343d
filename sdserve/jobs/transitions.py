"""The one table of job-state transitions: from which states each operation may move a job.

The store's SQL takes its WHERE clauses from here, so a rule changes in one place; a test runs
every operation from every state on both backends and checks the outcome against this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sdserve.jobs.models import JobStatus

_QUEUED = frozenset({JobStatus.IN_QUEUE})
_RUNNING = frozenset({JobStatus.IN_PROGRESS})
FINAL = frozenset(s for s in JobStatus if s.is_final)


class Op(StrEnum):
    CLAIM = "claim"
    """A worker starts the next run of a queued job."""
    COMPLETE = "complete"
    FAIL = "fail"
    TIME_OUT = "time_out"
    """The run passed its execution timeout (seen by its worker or by the sweeper)."""
    CANCEL = "cancel"
    RETRY = "retry"
    """The owner asks for a failed or timed-out job to run again, under the same id."""
    REQUEUE = "requeue"
    """The run's worker died or went silent, and the job has attempts left."""
    GIVE_UP = "give_up"
    """The run's worker died or went silent, and the job has no attempts left."""
    PURGE = "purge"
    EXPIRE = "expire"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[JobStatus]
    target: JobStatus | None
    """None: the job is deleted."""

    @property
    def source_values(self) -> list[str]:
        """The source states as stored, sorted (for SQL `IN`)."""
        return sorted(s.value for s in self.sources)

    @property
    def webhook(self) -> bool:
        """Whether reaching the target queues the job's webhook."""
        return self.target in WEBHOOK_STATES


WEBHOOK_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMED_OUT})
"""The endings a job's webhook reports (a cancelled job's owner already knows)."""

TRANSITIONS: dict[Op, Transition] = {
    Op.CLAIM: Transition(_QUEUED, JobStatus.IN_PROGRESS),
    Op.COMPLETE: Transition(_RUNNING, JobStatus.COMPLETED),
    Op.FAIL: Transition(_RUNNING, JobStatus.FAILED),
    Op.TIME_OUT: Transition(_RUNNING, JobStatus.TIMED_OUT),
    Op.CANCEL: Transition(_QUEUED | _RUNNING, JobStatus.CANCELLED),
    Op.RETRY: Transition(frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT}), JobStatus.IN_QUEUE),
    Op.REQUEUE: Transition(_RUNNING, JobStatus.IN_QUEUE),
    Op.GIVE_UP: Transition(_RUNNING, JobStatus.FAILED),
    Op.PURGE: Transition(_QUEUED, None),
    Op.EXPIRE: Transition(FINAL, None),
}

ENDINGS: dict[JobStatus, Op] = {
    JobStatus.COMPLETED: Op.COMPLETE,
    JobStatus.FAILED: Op.FAIL,
    JobStatus.TIMED_OUT: Op.TIME_OUT,
}
"""How a worker may end its own run."""
