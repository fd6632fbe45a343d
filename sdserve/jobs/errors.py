"""Errors the job core raises; each dialect renders them in its own wire shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdserve.registry import ModelRegistry


class JobError(Exception):
    """Base of errors meant for the client; `status_code` is the HTTP status to answer."""

    status_code = 400
    code: str | None = None
    """A short machine-readable reason, for dialects whose errors carry one (OpenAI's `code`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(JobError):
    """A request field breaks a rule; `field` names it (dotted path)."""

    status_code = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message


class NotFound(JobError):
    status_code = 404


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found (unknown, expired, or not yours)")


class EndpointNotFound(NotFound):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"endpoint {name!r} not found; available: {', '.join(available)}")
        self.available = available

    @classmethod
    def of(cls, name: str, registry: ModelRegistry) -> EndpointNotFound:
        """The error for a name `registry` lacks, listing the names it has."""
        return cls(name, registry.names)


class Conflict(JobError):
    """The job is in a state that does not allow the call."""

    status_code = 409


class QueueFull(JobError):
    status_code = 429

    def __init__(self, endpoint: str, retry_after_s: int) -> None:
        super().__init__(f"the queue of endpoint {endpoint!r} is full; retry later")
        self.retry_after_s = retry_after_s


class ResultTimeout(JobError):
    """A synchronous call's job did not finish in time; it was cancelled."""

    status_code = 504
    code = "timeout"
