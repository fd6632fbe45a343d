"""`GET /metrics` for Prometheus, and the HTTP latency of every request by route template.

The node's own samples (every process's, merged: `sdserve.metrics`) plus facts read from the
job store at each scrape (queue depth, running jobs, live and busy workers), so every API node
of a cluster reports the same store. With API keys set, a scrape needs one, unless
`SDSERVE_METRICS_PUBLIC` is on; without keys the server listens on loopback only.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from itertools import chain

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdserve import metrics
from sdserve.api.context import ApiContext, get_context
from sdserve.api.errors import ErrorBody
from sdserve.jobs.service import JobService

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

UNMATCHED = "unmatched"
"""The route label of a request no route answers: raw paths would make a series per URL."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods labelled as sent; any other is `other`, so made-up ones add no series."""


class StoreFacts(Collector):
    """Gauges read from the job store when scraped: the same on every node of a cluster."""

    def __init__(self, service: JobService) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("sdserve_job_store_up", "1 when the job store answered the scrape.")
        try:
            active = self._service.active_by_model()
            workers = self._service.workers()
        except Exception as error:  # whatever the backend's driver raises: the store is down
            log.warning("metrics: the job store did not answer: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queued = GaugeMetricFamily(
            "sdserve_queue_depth", "Jobs waiting in the queue.", labels=["model"]
        )
        running = GaugeMetricFamily("sdserve_jobs_running", "Jobs being run.", labels=["model"])
        for model, counts in sorted(active.items()):
            queued.add_metric([model], counts.in_queue)
            running.add_metric([model], counts.in_progress)
        yield queued
        yield running
        yield GaugeMetricFamily(
            "sdserve_workers_alive",
            "Workers that sent a heartbeat within SDSERVE_HEARTBEAT_TIMEOUT_S.",
            value=len(workers),
        )
        yield GaugeMetricFamily(
            "sdserve_workers_busy",
            "Live workers running a job.",
            value=sum(1 for worker in workers if worker.job_id is not None),
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus' text format",
        },
        401: {
            "model": ErrorBody,
            "description": "API keys are set and none was sent (see SDSERVE_METRICS_PUBLIC)",
        },
    },
)
def scrape(request: Request, ctx: ApiContext = Depends(get_context)) -> Response:
    """The node's metrics in Prometheus' text format (a plain function: FastAPI runs it in a
    thread, so reading the files and the store never blocks the event loop)."""
    if not ctx.settings.metrics_public:
        ctx.keys.owner_of(request)
    body, content_type = metrics.exposition(StoreFacts(ctx.service))
    return Response(body, media_type=content_type)


class RouteTemplates:
    """The template of each route under every prefix its router is included at, to label a
    request with (`/v2/{endpoint}/run`), never its path. FastAPI hands the middleware the route
    as its router declared it, without the prefix; this table adds it back."""

    def __init__(self) -> None:
        self._by_route: dict[int, list[tuple[re.Pattern[str], str]]] = {}

    def include(self, app: FastAPI, router: APIRouter, prefix: str = "") -> None:
        """`app.include_router(router, prefix=prefix)`, remembering its routes' templates."""
        app.include_router(router, prefix=prefix)
        for route in router.routes:
            path = getattr(route, "path", None)
            if isinstance(path, str):
                regex, template, _ = compile_path(prefix + path)
                self._by_route.setdefault(id(route), []).append((regex, template))

    def template(self, scope: Scope) -> str:
        """The request's route template; a request no route answers (a body refused before
        routing, an unknown path) is matched against every route."""
        route = scope.get("route")
        candidates = self._by_route.get(id(route)) if route is not None else None
        path = scope["path"]
        for regex, template in candidates or chain.from_iterable(self._by_route.values()):
            if regex.match(path):
                return template
        return UNMATCHED

    def path(self, scope: Scope) -> str:
        """The request's route template, else (no route answers it) its path."""
        template = self.template(scope)
        return scope["path"] if template == UNMATCHED else str(template)


class HttpMetricsMiddleware:
    """Observes each HTTP request's duration, to the end of its answer, by method, route
    template and status."""

    def __init__(self, app: ASGIApp, templates: RouteTemplates) -> None:
        self.app = app
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts: an exception no handler turned into one

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "other"
            metrics.http_answered(method, self.templates.template(scope), status, elapsed)
