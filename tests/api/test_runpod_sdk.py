"""The official `runpod` Python client, pointed at sdserve, works unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import runpod

from tests.conftest import API_KEY
from tests.helpers import ServerProcess

FAST = {"prompt": "a red circle", "width": 128, "height": 128, "num_inference_steps": 3}


@pytest.fixture
def endpoint(server: ServerProcess) -> Iterator[runpod.Endpoint]:
    runpod.endpoint_url_base = f"{server.url}/v2"
    yield runpod.Endpoint("stable-diffusion-v1", api_key=API_KEY)


def test_run_sync(endpoint: runpod.Endpoint) -> None:
    output = endpoint.run_sync({"input": {**FAST, "seed": 11}}, timeout=60)
    assert isinstance(output, list) and output[0]["seed"] == 11
    assert output[0]["image"].startswith("http")


def test_run_status_output(endpoint: runpod.Endpoint) -> None:
    job = endpoint.run(FAST)
    output = job.output(timeout=60)
    assert job.status() == "COMPLETED"
    assert len(output) == 1


def test_stream_cancel_health_purge(endpoint: runpod.Endpoint) -> None:
    job = endpoint.run({**FAST, "num_inference_steps": 12})
    chunks = list(job.stream())
    assert chunks and chunks[-1]["progress"] == "12/12"
    long_job = endpoint.run({**FAST, "num_inference_steps": 500})
    assert long_job.cancel()["status"] == "CANCELLED"
    health = endpoint.health()
    assert health["workers"]["idle"] + health["workers"]["running"] >= 1
    assert endpoint.purge_queue() == {"removed": 0, "status": "completed"}
