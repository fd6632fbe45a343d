"""Job delivery through procrastinate: one queue per model, priorities, worker registrations,
stalled-run detection and abort flags, behind a synchronous face.

Each sdserve job has at most one procrastinate job (its "delivery") at a time; the job's row
says which is current, so a stale worker can never close the delivery of a run not its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from procrastinate import App, PsycopgConnector
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job as Delivery
from procrastinate.jobs import Status

from sdserve.jobs.models import JobStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

TASK_NAME = "sdserve.generate"
NORMAL_PRIORITY = 0
LOW_PRIORITY = -10
_OUTCOMES = {JobStatus.COMPLETED: Status.SUCCEEDED, JobStatus.CANCELLED: Status.ABORTED}
"""How a run's ending is recorded on its delivery (anything else: failed)."""


def queue_name(model: str) -> str:
    """The procrastinate queue of a model's jobs."""
    return f"sdserve.{model}"


class EventLoopThread:
    """A private event loop thread: procrastinate's job manager is async, the job store not."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="procrastinate"
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result(timeout=60)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


async def _awaited(value: Awaitable[T]) -> T:
    return await value


class Deliveries:
    """procrastinate's side of the shared job store, called synchronously from any thread."""

    def __init__(self, conninfo: str, queues: list[str] | None) -> None:
        """`queues`: the queues this process's workers fetch from (None: all)."""
        self._queues = queues
        self._loop = EventLoopThread()
        self._app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=1, max_size=4))
        self._run(self._app.open_async())
        self._job_deferred = threading.Event()
        self._listener: concurrent.futures.Future[None] | None = None

    def _run(self, value: Awaitable[T]) -> T:
        return self._loop.run(_awaited(value))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        try:
            self._run(self._app.close_async())
        finally:
            self._loop.close()

    def defer(self, job_id: str, model: str, low_priority: bool) -> int:
        """Queue a delivery of the job on its model's queue; return the delivery's id."""
        task = self._app.configure_task(
            TASK_NAME,
            queue=queue_name(model),
            priority=LOW_PRIORITY if low_priority else NORMAL_PRIORITY,
        )
        return self._run(task.defer_async(job_id=job_id))

    def close_delivery(self, delivery_id: int, ending: JobStatus) -> None:
        status = _OUTCOMES.get(ending, Status.FAILED)
        manager = self._app.job_manager
        try:
            self._run(manager.finish_job_by_id_async(delivery_id, status, delete_job=True))
        except ConnectorException:
            log.debug("delivery %s was already closed", delivery_id)

    def cancel(self, delivery_id: int) -> None:
        """Drop a queued delivery; set the abort flag of a running one."""
        self._run(self._app.job_manager.cancel_job_by_id_async(delivery_id, abort=True))

    def register_worker(self) -> int:
        return self._run(self._app.job_manager.register_worker())

    def unregister_worker(self, fetcher: int) -> None:
        """Forget a worker: its running deliveries count as stalled from now on."""
        self._run(self._app.job_manager.unregister_worker(fetcher))

    def heartbeat(self, fetcher: int) -> None:
        self._run(self._app.job_manager.update_heartbeat(fetcher))

    def fetch(self, fetcher: int) -> Delivery | None:
        """The next delivery of our queues, now held by `fetcher` (ConnectorException if that
        worker is no longer registered)."""
        return self._run(self._app.job_manager.fetch_job(self._queues, fetcher))

    def stalled(self, silent_s: float) -> list[Delivery]:
        """Running deliveries whose worker has been silent `silent_s` or is gone."""
        manager = self._app.job_manager
        stalled = manager.get_stalled_jobs(task_name=TASK_NAME, seconds_since_heartbeat=silent_s)
        return list(self._run(stalled))

    def prune_workers(self, silent_s: float) -> None:
        self._run(self._app.job_manager.prune_stalled_workers(silent_s))

    def hand_on(self, delivery: Delivery, now: float) -> None:
        """Put a stalled delivery back in its queue for another worker."""
        retry_at = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        try:
            self._run(self._app.job_manager.retry_job(delivery, retry_at=retry_at))
        except ConnectorException:
            log.debug("delivery %s was already handed on", delivery.id)

    def wait(self, timeout_s: float) -> None:
        """Block until a delivery may be waiting in our queues, at most `timeout_s`."""
        if self._listener is None:
            self._listener = self._loop.submit(
                self._app.job_manager.listen_for_jobs(
                    on_notification=self._notified, queues=self._queues
                )
            )
        self._job_deferred.wait(timeout_s)
        self._job_deferred.clear()

    async def _notified(self, *, channel: str, notification: object) -> None:
        self._job_deferred.set()
