"""What a dialect plugs into the server: its routers, its error shape, its webhook payload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter

from sdserve.api.context import ApiContext
from sdserve.api.errors import ErrorRenderer
from sdserve.api.rules import RawReader
from sdserve.jobs.models import Job

WebhookRenderer = Callable[[Job, ApiContext], dict[str, Any]]


@dataclass(frozen=True)
class Dialect:
    name: str
    """Stored with each job it submits (`Job.dialect`), so its webhook takes this shape."""
    routers: list[tuple[APIRouter, str]]
    """Each router with the path prefix it is mounted at."""
    render_webhook: WebhookRenderer | None = None
    error_shapes: dict[str, ErrorRenderer] = field(default_factory=dict)
    """Path prefix -> how errors under it are answered (default: `{"error", "errors"}`)."""
    raw_readers: dict[str, RawReader] = field(default_factory=dict)
    """Submitting route's path template -> what of a body its schema refused the model's rules
    can still check (api/rules.py)."""
