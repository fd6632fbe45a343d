"""Dynamic batching through the API, on both backends: queued jobs that share a pipeline call
run in one, each keeping its own seed, status, cancel and priority; a worker killed under a
batch loses none of its jobs and runs none twice."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import API_KEY, backend_running_server
from tests.helpers import (
    ServerProcess,
    assert_batched_matches_alone,
    image_from_output,
    wait_for,
)

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
ALIKE: dict[str, Any] = {
    "width": 128,
    "height": 128,
    "num_inference_steps": 6,
    "scheduler": "EULER-A",
}
"""What the batched jobs share (their prompts and seeds differ)."""
BLOCKER: dict[str, Any] = {
    "prompt": "hold the worker",
    "width": 128,
    "height": 128,
    "num_inference_steps": 60,
}
"""A job that keeps the only worker busy while the next ones queue up."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    env = {
        "SDSERVE_SWEEP_INTERVAL_S": "0.5",
        "SDSERVE_RATE_LIMIT": "none",
        "SDSERVE_API_KEYS": API_KEY,
        "SDSERVE_MAX_BATCH": "4",
    }
    with backend_running_server(
        request, tmp_path_factory, ["--model", str(tiny_model)], env
    ) as srv:
        yield srv


def submit(client: httpx.Client, low_priority: bool = False, **fields: Any) -> str:
    body: dict[str, Any] = {"input": fields}
    if low_priority:
        body["policy"] = {"lowPriority": True}
    r = client.post("/v2/default/run", json=body)
    assert r.status_code == 200, r.text
    job_id: str = r.json()["id"]
    return job_id


def batches(server: ServerProcess) -> list[int]:
    """The sizes of the batches the workers have run so far, from their log."""
    return [int(n) for n in re.findall(r"batch of (\d+):", server.log())]


def batches_since(server: ServerProcess, before: int, count: int) -> list[int]:
    """The next `count` batch sizes logged after the first `before` (a batch is logged just
    after its last job is recorded, so the log may lag the status by a moment)."""
    deadline = time.time() + 10
    while len(sizes := batches(server)[before:]) < count and time.time() < deadline:
        time.sleep(0.1)
    return sizes


def hold_the_worker(client: httpx.Client) -> str:
    blocker = submit(client, **BLOCKER)
    wait_for(client, f"/v2/default/status/{blocker}", {"IN_PROGRESS"})
    return blocker


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_for(client, f"/v2/default/status/{job_id}", FINAL, timeout_s=240)


def test_jobs_that_share_a_call_run_in_one_and_each_keeps_its_seed(
    server: ServerProcess, client: httpx.Client
) -> None:
    blocker = hold_the_worker(client)
    before = len(batches(server))
    alike = [
        submit(client, prompt="a red circle", seed=10, **ALIKE),
        submit(client, prompt="a blue square", negative_prompt="green", seed=20, **ALIKE),
        submit(client, prompt="a yellow star", seed=30, **ALIKE),
    ]
    # another size, and as many images as the first three together: each runs alone
    other = submit(client, prompt="a red circle", seed=10, **(ALIKE | {"width": 192}))
    more = submit(client, prompt="a red circle", seed=40, num_outputs=3, **ALIKE)

    bodies = [finished(client, job_id) for job_id in [blocker, *alike, other, more]]

    assert [b["status"] for b in bodies] == ["COMPLETED"] * 6
    # the blocker alone, the three alike together, the other size alone, the three images
    assert batches_since(server, before, 4) == [1, 3, 1, 1]
    assert [len(b["output"]) for b in bodies] == [1, 1, 1, 1, 1, 3]
    assert [[o["seed"] for o in b["output"]] for b in bodies[1:4]] == [[10], [20], [30]]
    # Each batched image is its seed's own image: what the same request made alone makes.
    alone = client.post(
        "/v2/default/runsync",
        json={"input": {"prompt": "a yellow star", "seed": 30, **ALIKE}},
    ).json()
    assert alone["status"] == "COMPLETED", alone
    assert_batched_matches_alone(
        image_from_output(client, bodies[3]["output"][0]["image"]),
        image_from_output(client, alone["output"][0]["image"]),
    )
    # The 192-wide request alone drew the same seed and prompt as the first, at its own size.
    assert image_from_output(client, bodies[4]["output"][0]["image"]).shape == (128, 192, 3)


def test_a_job_cancelled_inside_a_batch_ends_at_once_and_the_others_finish(
    server: ServerProcess, client: httpx.Client
) -> None:
    blocker = hold_the_worker(client)
    slow = ALIKE | {"num_inference_steps": 40}
    jobs = [submit(client, prompt=f"shape {i}", seed=i, **slow) for i in range(3)]
    client.post(f"/v2/default/cancel/{blocker}")
    for job_id in jobs:
        wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})

    r = client.post(f"/v2/default/cancel/{jobs[1]}")

    assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    first, cancelled, last = (finished(client, job_id) for job_id in jobs)
    assert first["status"] == last["status"] == "COMPLETED"
    assert len(first["output"]) == len(last["output"]) == 1
    assert cancelled["status"] == "CANCELLED" and "output" not in cancelled


def test_a_low_priority_job_never_rides_with_normal_ones(
    server: ServerProcess, client: httpx.Client
) -> None:
    blocker = hold_the_worker(client)
    before = len(batches(server))
    low = submit(client, low_priority=True, prompt="later", seed=1, **ALIKE)
    normal = [submit(client, prompt=f"now {i}", seed=i, **ALIKE) for i in range(2)]

    ended = {job_id: finished(client, job_id) for job_id in [blocker, low, *normal]}

    assert {b["status"] for b in ended.values()} == {"COMPLETED"}
    assert batches_since(server, before, 3) == [1, 2, 1]  # the two normal ones, then the low one


def test_a_worker_killed_under_a_batch_loses_no_job_and_runs_none_twice(
    server: ServerProcess, client: httpx.Client
) -> None:
    blocker = hold_the_worker(client)
    slow = ALIKE | {"num_inference_steps": 60}
    jobs = [submit(client, prompt=f"survivor {i}", seed=100 + i, **slow) for i in range(3)]
    client.post(f"/v2/default/cancel/{blocker}")
    for job_id in jobs:
        wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})

    assert server.process is not None
    [worker] = [
        p
        for p in psutil.Process(server.process.pid).children()
        if "spawn_main" in " ".join(p.cmdline()) and p.cpu_percent(0.2) > 0
    ][:1]
    worker.send_signal(signal.SIGKILL)

    bodies = [finished(client, job_id) for job_id in jobs]
    assert [b["status"] for b in bodies] == ["COMPLETED"] * 3
    assert [[o["seed"] for o in b["output"]] for b in bodies] == [[100], [101], [102]]
