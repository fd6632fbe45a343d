"""Starts the worker processes of an embedded server and replaces any that die."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Semaphore

from sdserve import metrics
from sdserve.jobs.losses import SERVER_STOPPED, worker_died
from sdserve.jobs.store import JobStore
from sdserve.settings import Settings
from sdserve.worker.process import worker_main

log = logging.getLogger(__name__)

_CHECK_S = 0.5


class WorkerSupervisor:
    """Keeps `count` spawned workers alive; a dead worker's job goes back to the queue, using
    up one of its attempts (its death may be the job's doing)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        count: int,
        on_job_event: Callable[[str], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._count = count
        self._ctx = multiprocessing.get_context("spawn")
        # A semaphore, not an Event: an Event's lock held by a worker killed while waiting
        # on it would block every later set() (and so every submit) for good; releasing a
        # semaphore never waits for anyone.
        self._wake = self._ctx.Semaphore(0)
        # Workers report finished jobs here, so waiters wake at once without polling.
        self._events: SimpleQueue[str | None] = self._ctx.SimpleQueue()
        self._on_job_event = on_job_event
        # Which workers generate now, one flag per slot, for them to share a CPU's cores
        # (worker/cores.py); a replacement worker takes its dead predecessor's slot.
        self._busy = self._ctx.RawArray("b", max(count, 1))
        self._slots: dict[str, int] = {}
        # Set once the server drains: workers take no more jobs and exit after their batch.
        # One byte, no lock, so a signal handler can set it.
        self._draining = self._ctx.RawValue("b", 0)
        self._forced = False
        self._stopped = False
        self._relay = threading.Thread(target=self._relay_events, daemon=True, name="job-events")
        self._workers: dict[str, BaseProcess] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="supervisor")

    def wake(self) -> None:
        """Tell an idle worker that a job is waiting (wake-ups beyond one per worker would
        only send workers to find nothing)."""
        if self._wake.get_value() < max(self._count, 1):
            self._wake.release()

    @property
    def wake_semaphore(self) -> Semaphore:
        """What workers wait on for jobs: the node's other API processes release it too."""
        return self._wake

    def start(self) -> None:
        for slot in range(self._count):
            self._spawn(slot)
        self._thread.start()
        self._relay.start()

    def _relay_events(self) -> None:
        while (job_id := self._events.get()) is not None:
            self._on_job_event(job_id)

    def _spawn(self, slot: int) -> None:
        worker_id = f"worker-{uuid.uuid4().hex[:8]}"
        self._busy[slot] = 0  # a worker killed while generating left its flag raised
        busy = (self._busy, slot)
        process = self._ctx.Process(
            target=worker_main,
            args=(
                self._settings,
                worker_id,
                self._wake,
                self._events,
                os.getpid(),
                None,
                busy,
                self._draining,
            ),
            name=worker_id,
            daemon=True,
        )
        process.start()
        self._workers[worker_id] = process
        self._slots[worker_id] = slot
        log.info("started %s (pid %s)", worker_id, process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(_CHECK_S):
            for worker_id, process in list(self._workers.items()):
                if process.is_alive() or self._stopping.is_set() or self._draining.value:
                    continue
                died = worker_died(process.exitcode)
                log.error("%s %s; starting a new worker", worker_id, died.cause)
                del self._workers[worker_id]
                metrics.process_died(process.pid)
                requeued = self._store.requeue_orphans(
                    [worker_id], 0.0, self._settings.max_attempts, time.time(), died
                )
                self._store.remove_worker(worker_id)
                if requeued:
                    log.warning("job(s) %s of %s went back to the queue", requeued, worker_id)
                for job_id in requeued:
                    self._on_job_event(job_id)
                self._spawn(self._slots.pop(worker_id))
                self.wake()

    def begin_drain(self) -> None:
        """Tell the workers to take no more jobs and to exit once their batch is done (safe in
        a signal handler)."""
        self._draining.value = 1

    def force(self) -> None:
        """End a drain under way at once (safe in a signal handler): `drain` stops the
        workers, whose jobs go back to the queue."""
        self._forced = True

    def drain(self) -> None:
        """Let the running jobs finish, the workers exit, then stop (at once if `force`d)."""
        self.begin_drain()
        self._stopping.set()
        running = [p for p in self._workers.values() if p.is_alive()]
        if running and not self._forced:
            log.info("draining: waiting for the running jobs to finish (again to stop at once)")
        while not self._forced and any(p.is_alive() for p in running):
            time.sleep(0.1)
        self.stop()

    def stop(self) -> None:
        """Stop the workers at once; their jobs go back to the queue as they were (a stop is
        not the job's fault), for the next start or another node to run."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()  # so it replaces no worker from now on
        self._events.put(None)
        for process in self._workers.values():
            process.terminate()
        for process in self._workers.values():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            metrics.process_died(process.pid)
        stopped = list(self._workers)
        try:
            requeued = self._store.requeue_orphans(
                stopped, 0.0, self._settings.max_attempts, time.time(), SERVER_STOPPED
            )
            for worker_id in stopped:
                self._store.remove_worker(worker_id)
        except Exception:  # the database is away: the next start (or a sweep) re-queues them
            log.exception("could not hand the stopped workers' jobs back to the queue")
            return
        if requeued:
            log.warning("job(s) %s went back to the queue as the server stopped", requeued)
