"""Job types shared by every dialect, the store and the worker; the request lives in canonical."""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, JsonValue

from sdserve.canonical import GenerationRequest, ImageResult

TIMED_OUT_ERROR = "execution timeout exceeded"
"""The error of a run ended past its execution timeout, by its worker or by the sweeper."""


class JobStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)


class JobPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_timeout_ms: int | None = None
    ttl_ms: int | None = None
    low_priority: bool = False


class Job(BaseModel):
    id: str
    number: int = 0
    """A small integer id, unique per server, for dialects whose ids are numbers (ModelsLab)."""
    owner: str
    endpoint: str
    dialect: str = "runpod"
    """The API the job came through: its webhook payload takes that dialect's shape."""
    extra: dict[str, JsonValue] = {}
    """Dialect-specific details to answer with later (ModelsLab's track_id, ...)."""
    request: GenerationRequest
    input: dict[str, JsonValue]
    """The input as the client sent it, echoed back by /status."""
    status: JobStatus = JobStatus.IN_QUEUE
    policy: JobPolicy = JobPolicy()
    webhook: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    outputs: list[ImageResult] = []
    error: str | None = None
    warnings: list[str] = []
    """What the sender should know though the request was accepted (e.g. a prompt the demo
    model knows no word of)."""
    attempts: int = 0
    worker_id: str | None = None
    progress_step: int = 0
    progress_total: int = 0

    @property
    def delay_ms(self) -> int:
        """Milliseconds from submission to start (or to now, while queued)."""
        end = self.started_at if self.started_at is not None else (self.finished_at or time.time())
        return max(0, int((end - self.created_at) * 1000))

    @property
    def execution_ms(self) -> int:
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0, int((end - self.started_at) * 1000))


class JobCounts(BaseModel):
    in_queue: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0


class ProgressEvent(BaseModel):
    step: int
    total: int


class Preview(BaseModel):
    """A running job's latest preview: its first image as it forms, at `step` of `total`."""

    step: int
    total: int
    jpeg: bytes
