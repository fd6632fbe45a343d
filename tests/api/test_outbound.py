"""A server with no allowed networks refuses loopback image URLs and webhooks in every dialect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY
from tests.helpers import Receiver, ServerProcess, free_port, running_server

REFUSED = "could not fetch the image from this URL"
SMALL = {"width": 128, "height": 128, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[httpx.Client]:
    """A client of a server whose outbound URLs may reach public addresses only."""
    env = {"SDSERVE_API_KEYS": API_KEY, "SDSERVE_ALLOW_URL_NETWORKS": ""}
    data_dir = tmp_path_factory.mktemp("data")
    server: ServerProcess
    with (
        running_server(data_dir, ["--model", str(tiny_model)], env) as server,
        httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client,
    ):
        yield client


def test_loopback_image_urls_are_refused_alike(strict: httpx.Client) -> None:
    receiver = Receiver()  # an open port on loopback
    closed = free_port()
    messages = set()
    for url in [receiver.url, f"http://127.0.0.1:{closed}/x.png", f"http://localhost:{closed}/"]:
        r = strict.post("/v2/default/run", json={"input": {"prompt": "p", "init_image": url}})
        assert r.status_code == 400, r.text
        messages.add(r.json()["error"])
    assert messages == {f"input.init_image: {REFUSED}"}
    assert receiver.bodies == []


def test_loopback_webhooks_are_refused_at_submit_in_every_dialect(strict: httpx.Client) -> None:
    receiver = Receiver()
    r = strict.post("/v2/default/run", json={"input": {"prompt": "p"}, "webhook": receiver.url})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "webhook", r.text
    r = strict.post("/v1/inference/default", json={"prompt": "p", "webhook": receiver.url})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "webhook", r.text
    body = {"key": API_KEY, "prompt": "p", **SMALL, "webhook": receiver.url}
    answer = strict.post("/api/v3/text2img", json=body).json()
    assert answer["status"] == "error" and answer["errors"][0]["field"] == "webhook", answer
    assert receiver.bodies == []
