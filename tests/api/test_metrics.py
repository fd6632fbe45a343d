"""GET /metrics: what the API and its worker processes recorded, and what the store holds."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import API_KEY
from tests.helpers import Receiver, ServerProcess, running_server, wait_for
from tests.scrape import added, scrape, value

FAST = {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 3}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def worker_pids(server: ServerProcess) -> set[int]:
    """The server's spawned worker processes (multiprocessing's resource tracker is not one)."""
    assert server.process is not None
    pids = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # killed and not yet reaped: not a worker any more
            pass
    return pids


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    """One server with keys; a failed webhook is retried within a second."""
    env = {"SDSERVE_API_KEYS": API_KEY, "SDSERVE_WEBHOOK_RETRY_S": "0.5"}
    data_dir = tmp_path_factory.mktemp("data")
    with running_server(data_dir, ["--model", str(tiny_model)], env) as srv:
        yield srv


def test_metrics_need_a_key_when_keys_are_set(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer nope"}).is_error
    assert value(scrape(server.url, API_KEY), "sdserve_job_store_up") == 1
    responses = httpx.get(f"{server.url}/openapi.json").json()["paths"]["/metrics"]["get"]
    assert {"200", "401"} <= responses["responses"].keys()


def test_a_job_through_a_dialect_is_counted_by_the_api_and_its_worker(
    server: ServerProcess, client: httpx.Client
) -> None:
    receiver = Receiver(failures=1)  # the first try fails: a retry, then a delivery
    try:
        before = scrape(server.url, API_KEY)
        r = client.post("/v2/default/run", json={"input": FAST, "webhook": receiver.url})
        job_id = r.json()["id"]
        assert wait_for(client, f"/v2/default/status/{job_id}", FINAL)["status"] == "COMPLETED"
        assert len(receiver.wait(2)) == 2
        deadline = time.time() + 30
        after = scrape(server.url, API_KEY)
        # The outcome is counted once the receiver has answered: wait for it, not a time.
        while added(before, after, "sdserve_webhook_deliveries_total", outcome="delivered") < 1:
            assert time.time() < deadline, "the delivery was never counted"
            time.sleep(0.1)
            after = scrape(server.url, API_KEY)
    finally:
        receiver.http.shutdown()

    model, done = {"model": "default"}, {"model": "default", "state": "COMPLETED"}
    assert added(before, after, "sdserve_jobs_submitted_total", **model) == 1
    assert added(before, after, "sdserve_jobs_finished_total", **done) == 1
    assert added(before, after, "sdserve_job_queue_delay_seconds_count", **model) == 1
    assert added(before, after, "sdserve_job_execution_seconds_count", **done) == 1
    assert added(before, after, "sdserve_job_execution_seconds_sum", **done) > 0
    # Steps and images are counted only inside the worker process, never by the API process:
    # their presence here is the worker's samples merged into the API's answer. 3 steps: the
    # 2 after the first are timed.
    assert added(before, after, "sdserve_denoising_steps_total", **model) == 2
    assert added(before, after, "sdserve_denoising_seconds_total", **model) > 0
    assert added(before, after, "sdserve_images_generated_total", **model) == 1
    assert added(before, after, "sdserve_webhook_deliveries_total", outcome="retry") == 1
    assert added(before, after, "sdserve_webhook_deliveries_total", outcome="delivered") == 1
    assert added(before, after, "sdserve_webhook_deliveries_total", outcome="failed") == 0
    # HTTP latency by route template, never by path (a series per job id would be unbounded)
    run = {"method": "POST", "route": "/v2/{endpoint}/run", "status": "200"}
    status = {"method": "GET", "route": "/v2/{endpoint}/status/{job_id}", "status": "200"}
    assert added(before, after, "sdserve_http_request_duration_seconds_count", **run) == 1
    assert added(before, after, "sdserve_http_request_duration_seconds_count", **status) >= 1
    assert value(after, "sdserve_http_request_duration_seconds_bucket", le="+Inf", **run) >= 1
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not any(job_id in route or "/default/" in route for route in routes)
    # facts of the store
    assert value(after, "sdserve_queue_depth", model="default") == 0
    assert value(after, "sdserve_jobs_running", model="default") == 0
    assert value(after, "sdserve_workers_alive") == 1


def test_latency_labels_stay_bounded_whatever_the_request(server: ServerProcess) -> None:
    odd = uuid.uuid4().hex
    httpx.get(f"{server.url}/no/such/{odd}")
    httpx.request("PROPFIND", f"{server.url}/v2/default/{odd}")
    big = httpx.post(f"{server.url}/v2/default/run", content=b"x" * (11 * 1024 * 1024))
    assert big.status_code == 413  # refused before routing, still labelled with its route
    samples = scrape(server.url, API_KEY)
    count = "sdserve_http_request_duration_seconds_count"
    unmatched = {"route": "unmatched", "status": "404"}
    assert value(samples, count, method="GET", **unmatched) >= 1
    assert value(samples, count, method="other", **unmatched) >= 1
    assert value(samples, count, method="POST", route="/v2/{endpoint}/run", status="413") >= 1
    assert not any(odd in label for _, labels in samples for _, label in labels)


def test_a_running_job_shows_a_busy_worker(server: ServerProcess, client: httpx.Client) -> None:
    long = {**FAST, "num_inference_steps": 500}
    job_id = client.post("/v2/default/run", json={"input": long}).json()["id"]
    wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
    before = scrape(server.url, API_KEY)
    deadline = time.time() + 20
    # The worker table says which job a worker runs as of its last heartbeat (every second).
    while value(scrape(server.url, API_KEY), "sdserve_workers_busy") != 1:
        assert time.time() < deadline, "no busy worker while a job runs"
        time.sleep(0.1)
    assert value(scrape(server.url, API_KEY), "sdserve_jobs_running", model="default") == 1
    assert client.post(f"/v2/default/cancel/{job_id}").json()["status"] == "CANCELLED"
    after = scrape(server.url, API_KEY)
    cancelled = {"model": "default", "state": "CANCELLED"}
    assert added(before, after, "sdserve_jobs_finished_total", **cancelled) == 1
    assert added(before, after, "sdserve_job_execution_seconds_count", **cancelled) == 1
    assert value(after, "sdserve_jobs_running", model="default") == 0


def test_a_killed_worker_s_counts_stay_and_its_replacement_adds_to_them(
    server: ServerProcess, client: httpx.Client
) -> None:
    assert client.post("/v2/default/runsync", json={"input": FAST}).json()["status"] == "COMPLETED"
    # Killed mid-job, as a crash or the OOM killer would.
    long = {**FAST, "num_inference_steps": 500}
    job_id = client.post("/v2/default/run", json={"input": long}).json()["id"]
    wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
    [pid] = worker_pids(server)
    before = scrape(server.url, API_KEY)
    psutil.Process(pid).send_signal(signal.SIGKILL)
    client.post(f"/v2/default/cancel/{job_id}")
    deadline = time.time() + 120
    while not (worker_pids(server) - {pid}) or httpx.get(f"{server.url}/readyz").is_error:
        assert time.time() < deadline, f"no new worker:\n{server.log()}"
        time.sleep(0.2)
    still = scrape(server.url, API_KEY)
    steps = {"model": "default"}
    assert value(before, "sdserve_denoising_steps_total", **steps) >= 2  # the dead one's
    assert value(still, "sdserve_denoising_steps_total", **steps) == value(
        before, "sdserve_denoising_steps_total", **steps
    )
    assert client.post("/v2/default/runsync", json={"input": FAST}).json()["status"] == "COMPLETED"
    after = scrape(server.url, API_KEY)
    assert added(still, after, "sdserve_denoising_steps_total", **steps) == 2


@pytest.fixture(scope="module")
def public_queue(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """An API-only node (`--workers 0`: queued jobs stay queued) with two models, keys set and
    SDSERVE_METRICS_PUBLIC on."""
    args = ["--model", str(tiny_model), "--model", f"other={tiny_model}", "--workers", "0"]
    env = {"SDSERVE_API_KEYS": API_KEY, "SDSERVE_METRICS_PUBLIC": "true"}
    with running_server(tmp_path_factory.mktemp("data"), args, env, workers=False) as srv:
        yield srv


def test_queue_depth_per_model_public_when_set(public_queue: ServerProcess) -> None:
    auth = public_queue.auth
    with httpx.Client(base_url=public_queue.url, headers=auth, timeout=30) as client:
        ids = [client.post("/v2/default/run", json={"input": FAST}).json()["id"] for _ in range(3)]
        samples = scrape(public_queue.url)  # no key needed
        assert value(samples, "sdserve_queue_depth", model="default") == 3
        assert ("sdserve_queue_depth", frozenset({("model", "other")})) in samples
        assert value(samples, "sdserve_queue_depth", model="other") == 0
        assert value(samples, "sdserve_workers_alive") == 0
        assert value(samples, "sdserve_workers_busy") == 0
        client.post(f"/v2/default/cancel/{ids[0]}")
    after = scrape(public_queue.url)
    assert value(after, "sdserve_queue_depth", model="default") == 2
    cancelled = {"model": "default", "state": "CANCELLED"}
    assert value(after, "sdserve_jobs_finished_total", **cancelled) == 1
    assert value(after, "sdserve_job_execution_seconds_count", **cancelled) == 0  # never ran
