"""/healthz and /readyz: unauthenticated probes for load balancers and Kubernetes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY
from tests.helpers import ServerProcess, running_server

KEYS_ENV = {"SDSERVE_API_KEYS": API_KEY}


def _api_up(server: ServerProcess, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert server.process is not None and server.process.poll() is None, server.log()
        try:
            httpx.get(f"{server.url}/healthz", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"API not up in {timeout_s}s:\n{server.log()}")


@pytest.fixture(scope="module")
def starting(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    """A server with keys, returned as soon as its API answers (its worker may still load)."""
    server = ServerProcess(tmp_path_factory.mktemp("data"), ["--model", str(tiny_model)], KEYS_ENV)
    server.start(wait_ready=False)
    try:
        _api_up(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def no_workers(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """A server started with `--workers 0`: its API answers, nothing runs jobs."""
    args = ["--model", str(tiny_model), "--workers", "0"]
    with running_server(tmp_path_factory.mktemp("data"), args, KEYS_ENV, workers=False) as srv:
        yield srv


def test_healthz_answers_without_a_key(starting: ServerProcess) -> None:
    r = httpx.get(f"{starting.url}/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    # the same server refuses its API without a key
    assert httpx.get(f"{starting.url}/v2/default/health").status_code == 401


def test_readyz_is_200_without_a_key_once_the_worker_is_up(starting: ServerProcess) -> None:
    deadline = time.time() + 60
    r = httpx.get(f"{starting.url}/readyz")
    while r.status_code != 200 and time.time() < deadline:
        assert r.status_code == 503, r.text
        time.sleep(0.5)
        r = httpx.get(f"{starting.url}/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "database": True, "workers": 1, "missing": []}


def test_readyz_is_503_without_workers(no_workers: ServerProcess) -> None:
    assert httpx.get(f"{no_workers.url}/healthz").status_code == 200
    r = httpx.get(f"{no_workers.url}/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "not ready" and body["database"] is True and body["workers"] == 0
    assert body["missing"] == ["no worker has sent a heartbeat recently"]


def test_probes_are_in_the_openapi_document(no_workers: ServerProcess) -> None:
    paths = httpx.get(f"{no_workers.url}/openapi.json").json()["paths"]
    assert "200" in paths["/healthz"]["get"]["responses"]
    assert {"200", "503"} <= paths["/readyz"]["get"]["responses"].keys()
