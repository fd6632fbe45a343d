"""sdserve's Prometheus metrics: recorded by every process of a node, read back by /metrics.

A node (one `sdserve serve` with the workers it spawns) records in prometheus-client's
multiprocess mode: each process writes its samples to files of its own in the node's directory,
and the API merges the files at each scrape. So a step a worker process counts shows at the
API, and a counter does not go back when that worker dies (its files stay). `sdserve worker`
is a single process and serves its own samples on `--metrics-port`. Facts of the job store
(queue depth, busy workers) are not recorded here: the API reads them from the store at each
scrape, so every node reports the same truth.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's own variable: processes spawned later read it when they import it."""
_PREFIX = "sdserve-metrics-"
"""A node's directory is `<temp>/sdserve-metrics-<pid of its server>-<random>`."""

WebhookOutcome = Literal["delivered", "retry", "failed"]

# prometheus-client leaves its multiprocess helpers unannotated; their types, as documented.
_multi_process_value: Callable[[], type] = values.MultiProcessValue
_mark_process_dead: Callable[[int, str], None] = multiprocess.mark_process_dead
_multi_process_collector: Callable[[CollectorRegistry, str], Collector] = (
    multiprocess.MultiProcessCollector
)

_QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)

JOBS_SUBMITTED = Counter("sdserve_jobs_submitted_total", "Jobs submitted.", ["model"])
JOBS_FINISHED = Counter(
    "sdserve_jobs_finished_total",
    "Jobs that reached a final state (COMPLETED, FAILED, CANCELLED, TIMED_OUT).",
    ["model", "state"],
)
QUEUE_DELAY = Histogram(
    "sdserve_job_queue_delay_seconds",
    "Seconds from a job's submission (or retry) to the start of a run.",
    ["model"],
    buckets=_QUEUE_BUCKETS,
)
EXECUTION = Histogram(
    "sdserve_job_execution_seconds",
    "Seconds from the start of a job's run to its final state.",
    ["model", "state"],
    buckets=_RUN_BUCKETS,
)
DENOISING_STEPS = Counter(
    "sdserve_denoising_steps_total",
    "Denoising steps timed: each run's steps after its first.",
    ["model"],
)
DENOISING_SECONDS = Counter(
    "sdserve_denoising_seconds_total",
    "Seconds from each run's first denoising step to its last (steps/s = steps / seconds).",
    ["model"],
)
IMAGES = Counter("sdserve_images_generated_total", "Images generated and stored.", ["model"])
WEBHOOKS = Counter(
    "sdserve_webhook_deliveries_total",
    "Webhook tries by outcome: delivered, retry (failed, tried again later), failed (for good).",
    ["outcome"],
)
HTTP_LATENCY = Histogram(
    "sdserve_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its answer, by route template.",
    ["method", "route", "status"],
)


def job_submitted(model: str) -> None:
    JOBS_SUBMITTED.labels(model).inc()


@dataclass(frozen=True)
class Ending:
    """A job that reached a final state; the store records it once its transaction commits."""

    model: str
    state: str
    started_at: float | None
    """When its last run started (None: it never ran)."""
    at: float

    def record(self) -> None:
        JOBS_FINISHED.labels(self.model, self.state).inc()
        if self.started_at is not None:
            EXECUTION.labels(self.model, self.state).observe(max(0.0, self.at - self.started_at))


def run_started(model: str, delay_s: float) -> None:
    QUEUE_DELAY.labels(model).observe(max(0.0, delay_s))


def denoised(model: str, steps: int, seconds: float) -> None:
    DENOISING_STEPS.labels(model).inc(steps)
    DENOISING_SECONDS.labels(model).inc(seconds)


def images_generated(model: str, count: int) -> None:
    IMAGES.labels(model).inc(count)


def webhook_tried(outcome: WebhookOutcome) -> None:
    WEBHOOKS.labels(outcome).inc()


def http_answered(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_LATENCY.labels(method, route, str(status)).observe(seconds)


# --- where samples live --------------------------------------------------------------------


def open_node_directory() -> Path:
    """Make this process record in a new, empty directory, which the processes it starts
    afterwards inherit; call before anything is recorded. The caller removes it at exit."""
    parent = Path(tempfile.gettempdir())
    remove_stale_directories(parent)
    directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
    os.environ[_DIRECTORY_VARIABLE] = str(directory)
    # prometheus-client picks its value class when first imported, which may have been before
    # the directory existed; every sample is labelled, so none has a value yet.
    values.ValueClass = _multi_process_value()
    return directory


def remove_stale_directories(parent: Path) -> None:
    """Remove the directories in `parent` of nodes killed before they could (`kill -9`)."""
    for path in parent.glob(f"{_PREFIX}*-*"):
        pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def close_node_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(_DIRECTORY_VARIABLE, None)


def _node_directory() -> str | None:
    return os.environ.get(_DIRECTORY_VARIABLE)


def process_died(pid: int | None) -> None:
    """A process of the node is gone: its live gauges go; its counters stay, as they must."""
    directory = _node_directory()
    if directory is not None and pid is not None:
        _mark_process_dead(pid, directory)


class _ThisProcess(Collector):
    """The default registry's samples, for a process that records alone."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def exposition(*extra: Collector) -> tuple[bytes, str]:
    """The node's samples in Prometheus' text format, with `extra` collectors', and its type."""
    registry = CollectorRegistry()
    directory = _node_directory()
    if directory is not None:
        _multi_process_collector(registry, directory)
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_process_metrics(host: str, port: int) -> None:
    """Serve this process's samples at http://host:port/metrics from a thread (`sdserve
    worker`); unauthenticated, like most exporters: bind it to a private address."""
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
