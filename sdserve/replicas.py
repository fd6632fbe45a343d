"""More HTTP API processes for one node (`serve --api-workers N`), sharing its listening socket.

The first process (`sdserve serve` itself, the primary) binds the socket, runs the worker
supervisor, the sweeper and the webhook sender, and spawns N-1 replicas that serve HTTP on the
same socket (the kernel hands each connection to whichever process accepts it first, so a busy
process takes fewer). A replica holds nothing of its own: jobs live in the store, so any
process answers for any job. It wakes the node's workers through the supervisor's semaphore,
which releasing never blocks, and hears of finished jobs from the primary over a datagram
socket sent without waiting, so a dead or stuck replica can block nobody; what it misses, its
watcher's poll catches. The primary replaces a replica that dies; a replica whose primary is
gone exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Semaphore

from sdserve import metrics
from sdserve.settings import Settings

log = logging.getLogger(__name__)

_CHECK_S = 0.5
"""How often the primary looks for dead replicas, and a replica for a dead primary."""
_MAX_EVENT = 256
"""Longest job id relayed (ids are UUIDs, 36 characters)."""


@dataclass(frozen=True)
class ReplicaLink:
    """What a replica is given by the primary at spawn."""

    wake: Semaphore
    """The node's workers wait on it for queued jobs (the supervisor's)."""
    wake_cap: int
    """Pending wake-ups beyond this send workers to find nothing: one per worker."""
    events: socket.socket
    """Ids of jobs that changed state, relayed by the primary from its workers."""
    primary_pid: int

    def wake_workers(self) -> None:
        """Tell an idle worker a job is waiting; never blocks."""
        if self.wake.get_value() < self.wake_cap:
            self.wake.release()

    def listen(self, notify: Callable[[str], None]) -> None:
        """Pass every relayed job id to `notify`, from the running event loop."""
        self.events.setblocking(False)

        def readable() -> None:
            while True:
                try:
                    data = self.events.recv(_MAX_EVENT)
                except BlockingIOError:
                    return
                notify(data.decode())

        asyncio.get_running_loop().add_reader(self.events.fileno(), readable)

    def watch_primary(self, stop: Callable[[], None]) -> None:
        """Call `stop` once the primary is gone (killed with `kill -9`: it could not stop us)."""

        def watch() -> None:
            while os.getppid() == self.primary_pid:
                threading.Event().wait(_CHECK_S)
            log.warning("the primary API process %s is gone; stopping", self.primary_pid)
            stop()

        threading.Thread(target=watch, daemon=True, name="primary-watch").start()


ReplicaMain = Callable[[Settings, socket.socket, ReplicaLink], None]
"""Serves HTTP on the socket until stopped (`server.replica_main`)."""


@dataclass
class _Replica:
    process: BaseProcess
    events: socket.socket
    """The primary's end of the replica's event socket."""


class ApiReplicas:
    """The primary's view of its replicas: starts them, relays job events to them, replaces
    any that dies, and stops them."""

    def __init__(self, settings: Settings, target: ReplicaMain) -> None:
        self._settings = settings
        self._listener: socket.socket | None = None
        self._target = target
        self._ctx = multiprocessing.get_context("spawn")
        self._replicas: list[_Replica] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake: Semaphore | None = None

    def start(self, listener: socket.socket, wake: Semaphore) -> None:
        """Spawn `api_workers - 1` replicas serving on `listener` that wake workers through
        `wake`."""
        self._listener, self._wake = listener, wake
        for _ in range(self._settings.api_workers - 1):
            self._spawn()
        if self._settings.api_workers > 1:
            threading.Thread(target=self._watch, daemon=True, name="replica-watch").start()

    def relay(self, job_id: str) -> None:
        """Tell every replica that a job changed state; a replica that cannot take it now
        (dead, or its buffer full) misses it and polls instead."""
        data = job_id.encode()
        with self._lock:
            replicas = list(self._replicas)
        for replica in replicas:
            with contextlib.suppress(OSError):
                replica.events.send(data, socket.MSG_DONTWAIT)

    def _spawn(self) -> None:
        assert self._wake is not None and self._listener is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        link = ReplicaLink(
            wake=self._wake,
            wake_cap=max(self._settings.workers, 1),
            events=theirs,
            primary_pid=os.getpid(),
        )
        process = self._ctx.Process(
            target=self._target,
            args=(self._settings, self._listener, link),
            name="sdserve-api",
            daemon=False,
        )
        process.start()
        theirs.close()  # the replica has its own copy
        with self._lock:
            self._replicas.append(_Replica(process, ours))
        log.info("started API process %s", process.pid)

    def _watch(self) -> None:
        while not self._stopping.wait(_CHECK_S):
            with self._lock:
                dead = [r for r in self._replicas if not r.process.is_alive()]
                for replica in dead:
                    self._replicas.remove(replica)
            for replica in dead:
                if self._stopping.is_set():
                    return
                log.error(
                    "API process %s died (exit code %s); starting a new one",
                    replica.process.pid,
                    replica.process.exitcode,
                )
                replica.events.close()
                metrics.process_died(replica.process.pid)
                self._spawn()

    def begin_stop(self) -> None:
        """Have every replica stop taking requests, as the primary does when it begins to
        drain: each finishes its open ones (uvicorn on SIGTERM) and exits; `stop` waits for
        them. Safe in a signal handler: it takes no lock (the primary's event loop may hold
        it), copying the list instead."""
        self._stopping.set()
        for replica in list(self._replicas):
            with contextlib.suppress(OSError):
                replica.process.terminate()

    def stop(self) -> None:
        """Stop every replica (each finishes its open requests, as uvicorn does on SIGTERM)."""
        self._stopping.set()
        with self._lock:
            replicas, self._replicas = self._replicas, []
        for replica in replicas:
            replica.process.terminate()
        for replica in replicas:
            replica.process.join(timeout=15)
            if replica.process.is_alive():
                replica.process.kill()
                replica.process.join()
            replica.events.close()
            metrics.process_died(replica.process.pid)
