"""The worker process: loads pipelines in a setup step, then takes jobs until told to stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from ctypes import c_byte
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Semaphore
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdserve.engine.cache import PipelineCache
    from sdserve.engine.generate import GeneratedImage, OnPreview

from sdserve.canonical import GenerationRequest
from sdserve.jobs.backends import open_job_store
from sdserve.jobs.losses import WORKER_STOPPED
from sdserve.jobs.models import Job
from sdserve.jobs.store import JobStore
from sdserve.logs import setup_logging
from sdserve.registry import DEFAULT_MODEL, ModelRegistry, ModelSpec, load_registry
from sdserve.settings import Settings
from sdserve.storage.factory import open_image_store
from sdserve.worker.cores import BusyFlags, CoreShare
from sdserve.worker.runner import Generate, JobRunner

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
_IDLE_WAIT_S = 0.5
_RETRY_S = 2.0
_BATCH_POLL_S = 0.005
"""How often a worker waiting to fill a batch looks for more jobs."""
_BUSY_WAIT_S = 0.2
"""The longest a CPU worker waits to fill a batch while another worker generates."""


class _Heartbeat(threading.Thread):
    """Tells the store this worker lives; exits the process if its parent server died."""

    def __init__(self, store: JobStore, worker_id: str, parent_pid: int | None) -> None:
        super().__init__(daemon=True, name="heartbeat")
        self.store = store
        self.worker_id = worker_id
        self.parent_pid = parent_pid
        self.job_id: str | None = None

    def run(self) -> None:
        while True:
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("worker %s: the server process is gone; exiting", self.worker_id)
                os._exit(0)
            try:
                self.store.heartbeat(self.worker_id, self.job_id, time.time())
            except Exception:
                log.exception("worker %s: heartbeat failed", self.worker_id)
            time.sleep(HEARTBEAT_S)


def models_to_prepare(registry: ModelRegistry, models: list[str]) -> list[ModelSpec]:
    """What a worker loads before its first job: its default model (the built-in one when it
    serves it, else the first), so the first job runs at full speed; then every model that
    models.toml marks `compile = true`, so its first user does not wait for the compiling.
    (`--compile` for every model warms the default alone: loading them all could exceed the
    device's memory.)"""
    default = registry.resolve(DEFAULT_MODEL if DEFAULT_MODEL in models else models[0])
    chosen = [default] if default is not None else []
    for name in models:
        spec = registry.resolve(name)
        if spec is not None and spec.compile and spec not in chosen:
            chosen.append(spec)
    return chosen


def _prepare(specs: list[ModelSpec], cache: PipelineCache) -> None:
    from sdserve.engine.speed import warm_up

    for spec in specs:
        try:
            warm_up(cache.get(spec))  # compiles now, if the model is compiled
        except Exception:
            log.exception("could not load the model %s; its jobs will fail", spec.name)


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _share_cpu_cores(
    settings: Settings, busy: BusyFlags | None, worker_id: str
) -> CoreShare | None:
    """The worker's part in sharing the node's cores (None for a worker alone, which keeps
    torch's default, every core, unless `cpu_threads` fixes its threads)."""
    if busy is not None and settings.workers > 1:
        return CoreShare(*busy, fixed_threads=settings.cpu_threads, name=worker_id)
    if settings.cpu_threads is not None:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    return None


def request_runner(settings: Settings, registry: ModelRegistry, cache: PipelineCache) -> Generate:
    """The worker's Generate: the requests' model from `cache`, run under the server's
    settings (requests of one batch share their model)."""
    from sdserve.engine.generate import EngineOptions, generate_batch

    options = EngineOptions(
        loras_dir=settings.loras_dir,
        compel_everywhere=settings.compel_everywhere,
        nsfw_check=settings.nsfw_check,
        batch_images=settings.batch_images,
        preview_every=settings.preview_every,
    )

    def run_requests(
        requests: list[GenerationRequest],
        on_step: Callable[[int, int], None],
        on_preview: OnPreview | None = None,
    ) -> list[list[GeneratedImage]]:
        model = requests[0].model
        spec = registry.resolve(model)
        if spec is None:
            raise ValueError(f"model {model!r} is not configured on this worker")
        try:
            pipes = cache.get(spec)
        except Exception as exc:
            log.exception("could not load model %s", spec.name)
            reason = f"{type(exc).__name__}: {exc}"
            raise ValueError(
                f"could not load model {spec.name!r} from {spec.source}: {reason}"
            ) from None
        return generate_batch(pipes, requests, on_step, options, on_preview)

    return run_requests


class _Batcher:
    """Gathers queued jobs that can share the first one's pipeline call, up to `max_batch`
    images in all (jobs that share a call have as many images each), waiting at most
    `batch_wait_ms` for more to arrive, and longer (up to `_BUSY_WAIT_S`) while another
    worker of the node generates: the cores are busy then anyway, and a fuller batch makes
    more images per second. A lone request never waits at the defaults."""

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        max_batch: int,
        wait_ms: float,
        others_generating: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._max_images = max_batch
        self._wait_s = wait_ms / 1000
        self._others_generating = others_generating or (lambda: False)

    def gather(self, first: Job) -> list[Job]:
        batch = [first]
        jobs = self._max_images // first.request.num_outputs
        if jobs <= 1 or first.request.batch_key() is None:
            return batch
        start = time.monotonic()
        while True:
            batch += self._store.claim_batch(self._worker_id, time.time(), first, jobs - len(batch))
            waited = time.monotonic() - start
            if len(batch) >= jobs:
                return batch
            if waited >= self._wait_s and not (waited < _BUSY_WAIT_S and self._others_generating()):
                return batch
            time.sleep(_BATCH_POLL_S)


def worker_main(
    settings: Settings,
    worker_id: str,
    wake: Semaphore | None,
    events: SimpleQueue[str | None] | None,
    parent_pid: int | None,
    stop: threading.Event | None = None,
    busy: BusyFlags | None = None,
    draining: c_byte | None = None,
) -> None:
    """Run a worker: spawned by `serve` (with `wake`, `events` and `parent_pid`), or on its own
    (`sdserve worker`, which sets `stop` to drain: the running job ends, then the loop).
    `busy` is the node's generating-worker flags and this worker's slot in them, to share a
    CPU's cores between the workers; once `draining` is set, the worker takes no more jobs and
    returns after its batch."""
    setup_logging(settings.log_format)
    if parent_pid is not None:
        # Ctrl-C reaches the whole process group; the server stops its workers itself (and
        # must not take the interrupted worker for one its job killed).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The server's stop: exit through Python (not at once), so what the libraries made
        # is released, e.g. the semaphore tqdm's progress bars create, which would be
        # reported leaked.
        signal.signal(signal.SIGTERM, _exit_at_once)
    # Imported here so that the API process, which imports this module, never loads torch.
    from sdserve.engine.cache import GIB, PipelineCache
    from sdserve.engine.pipelines import resolve_device
    from sdserve.engine.speed import SpeedOptions

    registry = load_registry(settings.models_file, settings.model)
    models = served_models(settings, registry)
    store = open_job_store(settings, models)
    device = resolve_device(settings.device)
    cores = _share_cpu_cores(settings, busy, worker_id) if device == "cpu" else None
    budget = settings.model_memory_gb
    speed = SpeedOptions(settings.compile, settings.channels_last, settings.fuse_qkv)
    cache = PipelineCache(device, int(budget * GIB) if budget else None, speed)

    with cores.generating() if cores is not None else nullcontext():
        _prepare(models_to_prepare(registry, models), cache)
    # The first heartbeat announces the worker: only once it can take jobs at full speed.
    heartbeat = _Heartbeat(store, worker_id, parent_pid)
    heartbeat.start()
    log.info("worker %s ready on %s for %s", worker_id, device, ", ".join(models))
    generate = request_runner(settings, registry, cache)
    if cores is not None:
        generate = cores.sharing(generate)
    images = open_image_store(settings.storage, settings.images_dir)
    runner = JobRunner(store, images, generate, None if events is None else events.put)
    batcher = _Batcher(
        store,
        worker_id,
        settings.max_batch_for(device),
        settings.batch_wait_ms,
        None if cores is None else cores.others_generating,
    )
    stop = stop or threading.Event()
    try:
        while not stop.is_set() and not (draining is not None and draining.value):
            try:
                job = store.claim(worker_id, time.time())
            except Exception:  # the database is away: wait for it rather than exit
                log.exception("worker %s: could not take a job; retrying", worker_id)
                stop.wait(_RETRY_S)
                continue
            if job is None:
                if wake is not None and settings.database is None:
                    wake.acquire(timeout=_IDLE_WAIT_S)  # the embedded server wakes its workers
                else:
                    store.wait_for_jobs(_IDLE_WAIT_S)
                continue
            heartbeat.job_id = job.id
            with cores.holding() if cores is not None else nullcontext():
                batch = batcher.gather(job)
                for each in batch:
                    log.info(
                        "worker %s: running job %s (attempt %d)", worker_id, each.id, each.attempts
                    )
                runner.run_batch(batch)
            heartbeat.job_id = None
    finally:
        try:
            runner.close()  # the last batch's images are stored before the worker goes
        except Exception:
            log.exception("worker %s: could not store its last batch", worker_id)
        if parent_pid is None:
            if heartbeat.job_id is not None:  # told to stop at once, in the middle of a job
                store.requeue_orphans(
                    [worker_id], 0.0, settings.max_attempts, time.time(), WORKER_STOPPED
                )
            store.remove_worker(worker_id)
            store.close()
        else:
            # The worker's work is done and saved; what is left is the interpreter's exit. A
            # stop arriving now (a second Ctrl-C ends a drain at once) must not raise in the
            # middle of it, which prints a traceback into the server's log; the server kills
            # a worker that has not exited within its timeout.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


class UnknownQueue(ValueError):
    """`--queue` names a model this worker is not configured with."""


def served_models(settings: Settings, registry: ModelRegistry) -> list[str]:
    """The models this worker takes jobs for: `queues` (names or aliases), else all it has.
    Jobs carry their model's own name, never an alias, so those are the queues."""
    if not settings.queues:
        return [spec.name for spec in registry.models]
    names: list[str] = []
    for queue in settings.queues:
        spec = registry.resolve(queue)
        if spec is None:
            raise UnknownQueue(f"{queue!r} is not a configured model; have {registry.names}")
        if spec.name not in names:
            names.append(spec.name)
    return names
