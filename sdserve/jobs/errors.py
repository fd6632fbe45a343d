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
    retry_after_s: int | None = None
    """Seconds after which the same call may succeed (the `Retry-After` header), if it may."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        if retry_after_s is not None:
            message = f"{message}; retry in {retry_after_s} s"
            self.retry_after_s = retry_after_s
        super().__init__(message)
        self.message = message


class InvalidInput(JobError):
    """A request field breaks a rule; `field` names it (dotted path)."""

    status_code = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str, str]]:
        # Raised in the image decoding processes too, and pickled back.
        return (InvalidInput, (self.field, self.rule))


class InvalidInputs(InvalidInput):
    """Several fields break rules: each is reported, the first as `field` and `rule`."""

    def __init__(self, problems: list[InvalidInput]) -> None:
        super().__init__(problems[0].field, problems[0].rule)
        self.problems = problems
        self.message = "; ".join(problem.message for problem in problems)
        self.args = (self.message,)


def raise_all(problems: list[InvalidInput]) -> None:
    """Raise the problems found, one alone or all together; nothing if none."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InvalidInputs(problems)


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


class TooMany(JobError):
    """Refused for now (429); the client may try again after `retry_after_s` seconds."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s)


class QueueFull(TooMany):
    def __init__(self, endpoint: str, retry_after_s: int) -> None:
        super().__init__(f"the queue of endpoint {endpoint!r} is full", retry_after_s)


class QuotaFull(TooMany):
    """The caller's key has as many queued jobs as it may."""

    def __init__(self, quota: int, retry_after_s: int) -> None:
        super().__init__(
            f"this API key already has {quota} queued jobs, its quota (max_queued_per_key)",
            retry_after_s,
        )


class RateLimited(TooMany):
    def __init__(self, limit: str, retry_after_s: int) -> None:
        super().__init__(f"too many requests with this API key: at most {limit}", retry_after_s)


class IdempotencyMismatch(InvalidInput):
    """An Idempotency-Key reused with a different request (422, as the IETF draft says)."""

    status_code = 422
    code = "idempotency_key_reused"

    def __init__(self, header: str, job_id: str) -> None:
        super().__init__(
            header,
            f"was used for job {job_id} with a different request; use a new key for a new"
            " request, or send the same request again to get that job",
        )


class ResultTimeout(JobError):
    """A synchronous call's job did not finish in time; it was cancelled."""

    status_code = 504
    code = "timeout"


class ServerStopping(JobError):
    """A synchronous call's job had not started when the server began to stop; it was
    cancelled, and the same request may be sent again (to another node, or after a restart)."""

    status_code = 503
    code = "server_stopping"

    def __init__(self, job_id: str, retry_after_s: int) -> None:
        super().__init__(
            f"the server is stopping: job {job_id} had not started and has been cancelled;"
            " send the request again",
            retry_after_s,
        )
