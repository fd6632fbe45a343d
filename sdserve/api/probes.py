"""Probes for load balancers and Kubernetes: `/healthz` (alive) and `/readyz` (able to serve).

Neither needs an API key: they reveal no job, only whether this node can take work.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from sdserve.api.context import ApiContext, get_context

log = logging.getLogger(__name__)

router = APIRouter(tags=["probes"])


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: bool
    """Whether the job database answered a query."""
    workers: int
    """Workers that sent a heartbeat within `SDSERVE_HEARTBEAT_TIMEOUT_S`."""
    missing: list[str]
    """What keeps this node from being ready, for a person to read (empty when ready)."""


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """200 while the process answers at all (a liveness probe)."""
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `missing` says why"}},
)
def readyz(response: Response, ctx: ApiContext = Depends(get_context)) -> Readiness:
    """200 when the job database answers and a worker is alive; 503 with what is missing."""
    missing: list[str] = []
    try:
        # The heartbeat query doubles as the database check. The store does not record which
        # models a worker serves, so one live worker stands for all of them.
        workers = len(ctx.service.workers())
        database = True
    except Exception as error:  # whatever the backend's driver raises: the database is down
        log.warning("readiness: the job database did not answer: %s", error)
        workers, database = 0, False
        missing.append("the job database does not answer")
    if database and workers == 0:
        missing.append("no worker has sent a heartbeat recently")
    if missing:
        response.status_code = 503
    return Readiness(
        status="not ready" if missing else "ready",
        database=database,
        workers=workers,
        missing=missing,
    )
