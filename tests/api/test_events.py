"""A job's server-sent events: progress, previews and its end, read by real streaming clients
(httpx; the official openai client's image streaming), on both deployments."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from tests.conftest import API_KEY, OTHER_KEY
from tests.helpers import ServerProcess, decode_png

SIZE = 128
BODY = {
    "input": {
        "prompt": "a red circle on a blue background", "seed": 5, "width": SIZE,
        "height": SIZE, "num_inference_steps": 120,
    }
}  # fmt: skip


@pytest.fixture
def http(backend_server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=backend_server.url, headers=headers, timeout=120) as client:
        yield client


def read_events(client: httpx.Client, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the stream at `path`, as (event, decoded data), until it closes."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "message", []
    with client.stream("GET", path) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                events.append((name, json.loads("\n".join(data))))
                name, data = "message", []
    return events


def test_readers_follow_a_job_s_progress_previews_and_end(http: httpx.Client) -> None:
    job = http.post("/v2/default/run", json=BODY).json()
    path = f"/v2/default/events/{job['id']}"
    with ThreadPoolExecutor(2) as pool:  # two readers of one job
        streams = list(pool.map(lambda _: read_events(http, path), range(2)))

    status = http.get(f"/v2/default/status/{job['id']}").json()
    for events in streams:
        names = [name for name, _ in events]
        assert names[-1] == "done" and names.count("done") == 1, names
        assert events[-1][1] == status  # the end as /status tells it, output included
        steps = [data["step"] for name, data in events if name == "progress"]
        assert steps == sorted(steps) and steps[-1] <= 120, steps
        assert len(steps) >= 2, names
        previews = [data for name, data in events if name == "preview"]
        assert previews, names
        for preview in previews:
            assert preview["id"] == job["id"] and preview["media_type"] == "image/jpeg"
            assert 0 < preview["step"] <= preview["total"]
            image = Image.open(io.BytesIO(base64.b64decode(preview["image"])))
            assert image.format == "JPEG" and image.size == (SIZE // 8, SIZE // 8)

    # A reader arriving after the end hears it at once.
    late = read_events(http, path)
    assert late == [("done", status)]


def test_a_job_s_events_are_its_owner_s_only(
    http: httpx.Client, backend_server: ServerProcess
) -> None:
    assert http.get("/v2/default/events/no-such-job").status_code == 404
    job = http.post("/v2/default/run", json=BODY).json()
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    answer = httpx.get(f"{backend_server.url}/v2/default/events/{job['id']}", headers=other)
    assert answer.status_code == 404
    anonymous = httpx.get(f"{backend_server.url}/v2/default/events/{job['id']}")
    assert anonymous.status_code == 401
    http.post(f"/v2/default/cancel/{job['id']}")
    events = read_events(http, f"/v2/default/events/{job['id']}")
    assert events[-1][0] == "done" and events[-1][1]["status"] == "CANCELLED"


def test_the_openai_client_streams_partial_images_then_the_image(
    backend_server: ServerProcess,
) -> None:
    with OpenAI(base_url=f"{backend_server.url}/v1", api_key=API_KEY, timeout=120) as sdk:
        stream = sdk.images.generate(
            prompt="a red circle on a blue background",
            size=f"{SIZE}x{SIZE}",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 150, "seed": 5},
        )
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ], kinds
    partial, _, completed = events
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    preview = Image.open(io.BytesIO(base64.b64decode(partial.b64_json)))
    assert preview.format == "JPEG" and preview.size == (SIZE // 8, SIZE // 8)
    image = decode_png(base64.b64decode(completed.b64_json))
    assert image.shape == (SIZE, SIZE, 3)
    assert completed.size == f"{SIZE}x{SIZE}" and completed.output_format == "png"


def test_streaming_is_for_generations_only(backend_server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    files = {"image": ("a.png", _png(), "image/png")}
    answer = httpx.post(
        f"{backend_server.url}/v1/images/edits",
        headers=headers,
        data={"prompt": "x", "stream": "true"},
        files=files,
    )
    assert answer.status_code == 400, answer.text
    assert "stream" in answer.json()["error"]["message"]
    bad = httpx.post(
        f"{backend_server.url}/v1/images/generations",
        headers=headers,
        json={"prompt": "x", "stream": True, "partial_images": 4},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "partial_images", bad.text


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), "white").save(buffer, format="PNG")
    return buffer.getvalue()
