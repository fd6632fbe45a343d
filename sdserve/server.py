"""Builds the embedded server: job store, workers, housekeeping and the HTTP API in one process."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from sdserve import __version__, metrics
from sdserve.api import docs, files, loras, playground, probes, runpod
from sdserve.api import metrics as api_metrics
from sdserve.api.auth import KeyChecker
from sdserve.api.context import ApiContext
from sdserve.api.dialects import DIALECTS
from sdserve.api.errors import install_error_handlers, renderer_for
from sdserve.api.limits import MB, BodyLimitMiddleware
from sdserve.api.metrics import HttpMetricsMiddleware, RouteTemplates
from sdserve.api.openapi import install_openapi
from sdserve.api.ratelimit import RateLimits
from sdserve.api.rules import rule_errors_for
from sdserve.jobs.backends import open_job_store
from sdserve.jobs.image_pool import ImagePool
from sdserve.jobs.losses import SERVER_RESTARTED
from sdserve.jobs.models import Job
from sdserve.jobs.outbound import UrlPolicy
from sdserve.jobs.requests import InputLimits
from sdserve.jobs.service import JobService
from sdserve.jobs.watcher import JobWatcher
from sdserve.logs import setup_logging
from sdserve.registry import ModelRegistry, load_registry
from sdserve.replicas import ApiReplicas, ReplicaLink
from sdserve.settings import Settings, device_kind
from sdserve.storage.factory import open_image_store
from sdserve.storage.signing import UrlSigner, load_secret
from sdserve.sweeper import run_sweeper
from sdserve.webhooks import RetryPolicy, load_webhook_secret, run_webhooks
from sdserve.worker.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)


class UnsafeBinding(Exception):
    """Refusing to serve without API keys on an address other machines can reach."""


def body_limit(path: str) -> int:
    """20 MB for synchronous calls, 10 MB for everything else (API.md section 1)."""
    return 20 * MB if path.endswith("/runsync") else 10 * MB


def check_binding(settings: Settings) -> None:
    if not settings.api_keys and not settings.is_loopback:
        raise UnsafeBinding(
            f"refusing to listen on {settings.host} without API keys: set --api-key"
            " (or SDSERVE_API_KEYS), or listen on 127.0.0.1"
        )


def create_app(
    settings: Settings,
    replica: ReplicaLink | None = None,
    relay: Callable[[str], None] | None = None,
) -> FastAPI:
    """The whole embedded server as an ASGI app; workers start with the app's lifespan.

    `replica`: this app is one of the node's extra API processes, which serve HTTP only (no
    workers, sweeper or webhooks). `relay`: the primary's replicas, told of every job event."""
    check_binding(settings)
    store = open_job_store(settings)
    registry = load_registry(settings.models_file, settings.model)
    watcher = JobWatcher(store)

    def job_event(job_id: str) -> None:
        watcher.notify(job_id)
        if relay is not None:
            relay(job_id)

    supervisor: WorkerSupervisor | None = None
    wake_workers: Callable[[], None]
    if replica is None:
        supervisor = WorkerSupervisor(settings, store, settings.workers, on_job_event=job_event)
        wake_workers = supervisor.wake
    else:
        wake_workers = replica.wake_workers
    urls = UrlPolicy.parse(settings.allow_url_networks)
    service = JobService(
        store,
        registry,
        watcher=watcher,
        wake_workers=wake_workers,
        max_queue=settings.max_queue,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        limits=InputLimits(
            settings.fetch_timeout_s,
            settings.fetch_max_bytes,
            settings.loras_dir,
            urls=urls,
            max_prompt_chars=settings.max_prompt_chars,
            compel_everywhere=settings.compel_everywhere,
            images=ImagePool(settings.image_processes),
        ),
        # An open server has one user: there is no one to share fairly with.
        max_queued_per_key=settings.max_queued_per_key if settings.api_keys else None,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
    images = open_image_store(settings.storage, settings.images_dir)
    ctx = ApiContext(
        settings=settings,
        service=service,
        keys=KeyChecker(settings.api_keys),
        images=images,
        signer=UrlSigner(load_secret(settings.secret_key, settings.data_dir)),
        rates=RateLimits(
            settings.rate_limit if settings.api_keys else "none", settings.rate_limit_storage
        ),
    )

    renderers = {d.name: d.render_webhook for d in DIALECTS if d.render_webhook is not None}

    def render_webhook(job: Job) -> dict[str, Any]:
        return renderers.get(job.dialect, runpod.render_webhook)(job, ctx)

    @asynccontextmanager
    async def replica_lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert replica is not None
        replica.listen(watcher.notify)
        _settle()
        try:
            yield
        finally:
            await service.close()
            await asyncio.to_thread(store.close)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert supervisor is not None
        if settings.database is None:
            # Embedded: nothing runs before this start, so whatever was IN_PROGRESS lost its
            # worker. (Shared: other machines' workers may be running; heartbeats tell.)
            now = time.time()
            requeued = store.requeue_orphans(
                None, now + 1, settings.max_attempts, now, SERVER_RESTARTED
            )
            if requeued:
                log.warning(
                    "re-queued %d job(s) interrupted by the last shutdown, without using up"
                    " one of their attempts",
                    len(requeued),
                )
        supervisor.start()
        tasks = [
            asyncio.create_task(run_sweeper(store, images, settings)),
            asyncio.create_task(
                run_webhooks(
                    store,
                    render_webhook,
                    load_webhook_secret(settings.webhook_secret, settings.data_dir),
                    RetryPolicy(settings.webhook_retry_s, settings.webhook_horizon_s),
                    settings.webhook_timeout_s,
                    urls,
                )
            ),
        ]
        _settle()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await service.close()
            await asyncio.to_thread(supervisor.drain)
            await asyncio.to_thread(store.close)

    app = FastAPI(
        title="sdserve",
        version=__version__,
        lifespan=lifespan if replica is None else replica_lifespan,
        docs_url=None,  # api/docs.py serves /docs and /redoc from the package, not a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.supervisor = supervisor
    render_for = renderer_for({p: r for d in DIALECTS for p, r in d.error_shapes.items()})
    routes = RouteTemplates()
    readers = {path: r for d in DIALECTS for path, r in d.raw_readers.items()}
    install_error_handlers(app, render_for, routes.path, rule_errors_for(readers, routes.path))
    install_openapi(app)
    for router in (
        files.router,
        loras.router,
        probes.router,
        api_metrics.router,
        docs.router,
        playground.router,
    ):
        routes.include(app, router)
    for dialect in DIALECTS:
        for router, prefix in dialect.routers:
            routes.include(app, router, prefix)
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit, render_for=render_for)
    # Outside the body limit, so a refused body is timed too.
    app.add_middleware(HttpMetricsMiddleware, templates=routes)
    return app


def _settle() -> None:
    """Start-up is over: what it allocated (modules, routes, schemas) stays for good, so the
    garbage collector stops walking it at every collection of a busy server's requests."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> None:
    """Run the embedded server until interrupted: the primary API process, and
    `api_workers - 1` replicas on the same socket."""
    setup_logging(settings.log_format, settings.access_log)
    # This node's processes (this one, the workers and replicas it spawns) record metrics there.
    # Before anything else starts (migrations, workers): a busy port fails at once.
    check_binding(settings)
    listener = listen(settings.host, settings.port)
    directory = metrics.open_node_directory()
    replicas: ApiReplicas | None = None
    try:
        replicas = ApiReplicas(settings, replica_main)
        app = create_app(settings, relay=replicas.relay)
        config = _uvicorn_config(settings, app)
        log.info("%s", startup_summary(settings, app.state.ctx.service.registry))
        if settings.api_workers > 1 and app.state.ctx.rates.per_process:
            log.warning(
                "the %d API processes each count request rates on their own: a key may get"
                " up to %d times SDSERVE_RATE_LIMIT (%s); SDSERVE_RATE_LIMIT_STORAGE=redis://..."
                " makes it exact",
                settings.api_workers, settings.api_workers, settings.rate_limit,
            )  # fmt: skip
        replicas.start(listener, app.state.supervisor.wake_semaphore)
        supervisor: WorkerSupervisor = app.state.supervisor
        # uvicorn raises the signals it caught again once it is done: they must find handlers
        # that let this function clean up and return (the defaults would kill or raise here).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)
        server = _DrainingServer(config, app.state.ctx.service, supervisor, replicas)
        server.run(sockets=[listener])
        if server.force_exit:  # uvicorn skipped the app's shutdown: what it would have done
            supervisor.stop()  # the running jobs go back to the queue
            app.state.ctx.service.close_processes()
    finally:
        if replicas is not None:
            replicas.stop()
        metrics.close_node_directory(directory)


class _StoppingServer(uvicorn.Server):
    """uvicorn, whose stop answers the calls waiting on a job still queued at once (a
    `/runsync` with the job as it stands, a synchronous dialect's call with a 503) instead of
    holding the stop until their timeout: the node's workers start no more jobs."""

    def __init__(self, config: uvicorn.Config, service: JobService) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._service.stop_waiting_on_queued()
        super().handle_exit(sig, frame)


class _DrainingServer(_StoppingServer):
    """The primary's uvicorn, draining the workers: the first SIGINT or SIGTERM stops new jobs
    from starting and every API process of the node from taking requests (the running jobs
    finish, and so do the requests waiting on them), a second stops at once (the jobs go back
    to the queue)."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: JobService,
        supervisor: WorkerSupervisor,
        replicas: ApiReplicas,
    ) -> None:
        super().__init__(config, service)
        self._supervisor = supervisor
        self._replicas = replicas

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
            self._supervisor.force()
        else:
            self._supervisor.begin_drain()
            self._replicas.begin_stop()
        super().handle_exit(sig, frame)


class CannotListen(Exception):
    """The server's address cannot be listened on (most often: another process has it)."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port`, shared by the node's API processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        hint = (
            "; another server is running there? choose another --port"
            if exc.errno in (errno.EADDRINUSE,)
            else ""
        )
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CannotListen(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    listener.set_inheritable(True)
    return listener


def replica_main(settings: Settings, listener: socket.socket, link: ReplicaLink) -> None:
    """A replica API process: serve HTTP on the primary's socket until stopped."""
    setup_logging(settings.log_format, settings.access_log)
    app = create_app(settings, replica=link)
    server = _StoppingServer(_uvicorn_config(settings, app), app.state.ctx.service)

    def stop() -> None:
        server.should_exit = True

    link.watch_primary(stop)
    server.run(sockets=[listener])


def _uvicorn_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=None,  # the levels sdserve.logs sets
        log_config=None,  # the process's own (sdserve.logs), not uvicorn's
        access_log=settings.access_log,
    )


def startup_summary(settings: Settings, registry: ModelRegistry) -> str:
    """What runs where, in one line: address, mode, workers and device, models, data."""
    mode = (
        "shared mode (jobs in PostgreSQL)"
        if settings.database
        else f"embedded mode (jobs in SQLite in {settings.data_dir})"
    )
    device = settings.device if settings.device != "auto" else f"auto: {device_kind('auto')}"
    models = ", ".join(
        f"{spec.name} ({'built-in demo' if spec.builtin else spec.rules.family.title})"
        for spec in registry.models
    )
    images = settings.storage.split("?")[0] if settings.storage else f"{settings.data_dir}"
    demo = any(spec.builtin for spec in registry.models)
    return (
        f"sdserve {__version__} on http://{settings.host}:{settings.port}, {mode};"
        f" {settings.workers} worker(s) on {device}, {settings.api_workers} API process(es);"
        f" models: {models}; images in {images}"
        + (
            " (the built-in demo model draws one shape on a background, see the README's"
            " prompts; --model serves real Stable Diffusion weights)"
            if demo
            else ""
        )
    )
