"""`Idempotency-Key` on every submitting call: the same key and request make one job, also
after a restart; the same key with another request is refused, naming the header."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import API_KEY, OTHER_KEY
from tests.helpers import ServerProcess, running_server, wait_for

SMALL = {"width": 128, "height": 128, "num_inference_steps": 2}
HEADER = "Idempotency-Key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    env = {"SDSERVE_API_KEYS": f"{API_KEY},{OTHER_KEY}", "SDSERVE_SWEEP_INTERVAL_S": "0.5"}
    data_dir = tmp_path_factory.mktemp("data")
    with running_server(data_dir, ["--model", str(tiny_model)], env) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=120) as c:
        yield c


def fresh() -> dict[str, str]:
    return {HEADER: str(uuid.uuid4())}


def test_the_same_key_and_request_make_one_job(client: httpx.Client) -> None:
    key = fresh()
    body = {"input": {"prompt": "a red circle", "seed": 5, **SMALL}, "policy": {"ttl": 60_000}}
    first = client.post("/v2/default/run", json=body, headers=key)
    assert first.status_code == 200, first.text
    # The same JSON with its keys in another order and other spacing is the same request.
    reordered = json.dumps({"policy": body["policy"], "input": body["input"]}, indent=2)
    headers = {**key, "Content-Type": "application/json"}
    again = client.post("/v2/default/run", content=reordered, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    done = wait_for(client, f"/v2/default/status/{first.json()['id']}", {"COMPLETED"})
    # The same body to another call is another request.
    assert client.post("/v2/default/runsync", json=body, headers=key).status_code == 422
    # After it ran, the same request answers with the same job.
    replay = client.post("/v2/default/run", json=body, headers=key)
    assert replay.json() == {"id": done["id"], "status": "COMPLETED"}


def test_the_same_key_with_another_request_is_refused(client: httpx.Client) -> None:
    key = fresh()
    body = {"input": {"prompt": "a red circle", **SMALL}}
    job_id = client.post("/v2/default/run", json=body, headers=key).json()["id"]
    other = {"input": {"prompt": "a blue square", **SMALL}}
    refused = client.post("/v2/default/run", json=other, headers=key)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"] == [
        {
            "field": HEADER,
            "message": f"was used for job {job_id} with a different request; use a new key for"
            " a new request, or send the same request again to get that job",
        }
    ]
    # Another API key's Idempotency-Key of the same name is its own.
    theirs = client.post(
        "/v2/default/run", json=other, headers={**key, "Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert theirs.status_code == 200 and theirs.json()["id"] != job_id


@pytest.mark.parametrize("value", [b"", b"x" * 256, "naïve".encode(), b"two words"])
def test_a_malformed_key_is_a_400_naming_the_header(client: httpx.Client, value: bytes) -> None:
    headers = {HEADER.encode(): value}
    r = client.post("/v2/default/run", json={"input": {"prompt": "p"}}, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == HEADER


def test_deepinfra_and_modelslab_return_the_same_job(client: httpx.Client) -> None:
    key = fresh()
    body = {"prompt": "a red circle", "num_inference_steps": 2, "width": 128, "height": 128}
    first = client.post("/v1/inference/default", json=body, headers=key).json()
    again = client.post("/v1/inference/default", json=body, headers=key).json()
    assert again["request_id"] == first["request_id"] and again["images"] == first["images"]

    key = fresh()
    body = {"key": API_KEY, "prompt": "a red circle", "samples": 1, **SMALL}
    first = client.post("/api/v6/images/text2img", json=body, headers=key).json()
    again = client.post("/api/v6/images/text2img", json=body, headers=key).json()
    assert first["status"] in ("success", "processing") and again["id"] == first["id"]


def test_the_openai_client_gets_the_same_images(server: ServerProcess) -> None:
    # The official OpenAI client sends the header with `extra_headers`.
    official = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    key = fresh()
    made = [
        official.images.generate(
            prompt="a red circle", size="256x256", response_format="b64_json", extra_headers=key
        )
        for _ in range(2)
    ]
    assert made[0].data is not None and made[1].data is not None
    assert made[1].created == made[0].created
    assert made[1].data[0].b64_json == made[0].data[0].b64_json


def test_a_form_sent_twice_is_the_same_request(client: httpx.Client) -> None:
    # Each sending has its own multipart boundary; it is still the same request.
    png = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 30, 30)).save(png, format="PNG")
    key = fresh()
    edits = [
        client.post(
            "/v1/images/edits",
            data={"prompt": "a red circle", "size": "256x256", "response_format": "b64_json"},
            files={"image": ("in.png", png.getvalue(), "image/png")},
            headers=key,
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in edits] == [200, 200], edits[0].text
    assert edits[1].json() == edits[0].json()


def test_a_key_outlives_restarts_and_says_when_its_job_expired(
    client: httpx.Client, server: ServerProcess
) -> None:
    key = fresh()
    # ttl: long enough that the job, re-run once the server is back, is still kept when the
    # key is sent again; short enough to see it expire.
    body = {"input": {"prompt": "a red circle", **SMALL}, "policy": {"ttl": 5000}}
    job_id = client.post("/v2/default/run", json=body, headers=key).json()["id"]
    server.kill()
    server.start()
    again = client.post("/v2/default/run", json=body, headers=key)
    assert again.status_code == 200 and again.json()["id"] == job_id
    wait_for(client, f"/v2/default/status/{job_id}", {"COMPLETED"})
    deadline = time.time() + 30
    while client.get(f"/v2/default/status/{job_id}").status_code != 404:
        assert time.time() < deadline, "the job never expired"
        time.sleep(0.2)
    expired = client.post("/v2/default/run", json=body, headers=key)
    assert expired.status_code == 409, expired.text
    assert f"made job {job_id}, which has expired" in expired.json()["error"]
