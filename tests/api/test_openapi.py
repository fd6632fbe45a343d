"""/openapi.json describes what each dialect really answers: a real answer of every generation
and status call validates against the schema the document gives for it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import API_KEY
from tests.helpers import wait_for

FAST = {"width": 128, "height": 128, "num_inference_steps": 2, "seed": 5}
Document = dict[str, Any]


@pytest.fixture(scope="module")
def document(server: Any) -> Document:
    r = httpx.get(f"{server.url}/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def assert_documented(document: Document, method: str, path: str, answer: httpx.Response) -> None:
    """`answer` is a 200 whose body fits the schema the document gives `method path`'s 200."""
    assert answer.status_code == 200, answer.text
    operation = document["paths"][path][method]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    members = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    assert any("$ref" in member for member in members), f"{method} {path}: {schema}"
    # The schema's references point into the document's components.
    validator = Draft202012Validator({**schema, "components": document["components"]})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(answer.json())]
    assert not errors, f"{method.upper()} {path} answered outside its schema: {errors}"


def test_runpod_run_status_and_runsync(document: Document, client: httpx.Client) -> None:
    queued = client.post("/v2/default/run", json={"input": {"prompt": "a circle", **FAST}})
    assert_documented(document, "post", "/v2/{endpoint}/run", queued)
    status = f"/v2/default/status/{queued.json()['id']}"
    wait_for(client, status, {"COMPLETED"})
    assert_documented(document, "get", "/v2/{endpoint}/status/{job_id}", client.get(status))
    done = client.post("/v1/default/runsync", json={"input": {"prompt": "a circle", **FAST}})
    assert done.json()["status"] == "COMPLETED"
    assert_documented(document, "post", "/v1/{endpoint}/runsync", done)


def test_deepinfra_inference(document: Document, client: httpx.Client) -> None:
    answer = client.post(
        "/v1/inference/stabilityai/stable-diffusion-2-1", json={"prompt": "p", **FAST}
    )
    assert answer.json()["inference_status"]["status"] == "succeeded"
    assert_documented(document, "post", "/v1/inference/{model}", answer)
    queued = client.post(
        "/v1/inference/default",
        data={
            "prompt": "p",
            **{k: str(v) for k, v in FAST.items()},
            "webhook": "http://127.0.0.1:9/",
        },
    )
    assert queued.json()["inference_status"]["status"] == "queued"
    assert_documented(document, "post", "/v1/inference/{model}", queued)


def test_modelslab_generate_and_fetch(document: Document, client: httpx.Client) -> None:
    body = {"key": API_KEY, "prompt": "p", "samples": "1", **{k: str(v) for k, v in FAST.items()}}
    answer = client.post("/api/v6/images/text2img", json=body)
    assert answer.json()["status"] in ("success", "processing")
    assert_documented(document, "post", "/api/v6/images/text2img", answer)
    number = answer.json()["id"]
    fetched = client.post(f"/api/v6/images/fetch/{number}", json={"key": API_KEY})
    assert_documented(document, "post", "/api/v6/images/fetch/{request_id}", fetched)
    fetched = client.post("/api/v3/fetch", json={"key": API_KEY, "request_id": number})
    assert_documented(document, "post", "/api/v3/fetch", fetched)
    invalid = client.post("/api/v3/text2img", json={**body, "width": "100"})
    assert invalid.json()["status"] == "error"  # ModelsLab answers bad input with a 200
    assert_documented(document, "post", "/api/v3/text2img", invalid)


@pytest.mark.parametrize("base", ["/v1", "/v1/openai"])
def test_openai_generations_and_models(document: Document, client: httpx.Client, base: str) -> None:
    for response_format in ("url", "b64_json"):
        body = {"prompt": "p", "size": "128x128", "response_format": response_format, "seed": 5}
        answer = client.post(f"{base}/images/generations", json={**body, "num_inference_steps": 2})
        assert_documented(document, "post", f"{base}/images/generations", answer)
    assert_documented(document, "get", f"{base}/models", client.get(f"{base}/models"))
    one = client.get(f"{base}/models/stabilityai/stable-diffusion-2-1")
    assert_documented(document, "get", f"{base}/models/{{model}}", one)


def test_request_bodies_are_described(document: Document) -> None:
    """Generated clients send what the server reads: JSON, or multipart where files go."""
    bodies = {
        ("/v2/{endpoint}/run", "application/json"),
        ("/v1/inference/{model}", "multipart/form-data"),
        ("/api/v6/images/text2img", "application/json"),
        ("/v1/images/generations", "application/json"),
        ("/v1/images/edits", "multipart/form-data"),
        ("/v1/openai/images/generations", "application/json"),
    }
    for path, media_type in bodies:
        content = document["paths"][path]["post"]["requestBody"]["content"]
        schema = content[media_type]["schema"]
        assert "$ref" in schema or schema.get("properties"), f"{path}: {schema}"
    edits = document["components"]["schemas"]["ImageEditRequest"]["properties"]
    assert edits["image"]["contentMediaType"] == "application/octet-stream"


def test_event_streams_are_described(document: Document, client: httpx.Client) -> None:
    """The server-sent event answers are documented as such, and OpenAI's events fit theirs."""
    events = document["paths"]["/v2/{endpoint}/events/{job_id}"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"] and "preview" in events["description"]
    generations = document["paths"]["/v1/images/generations"]["post"]["responses"]["200"]
    schema = generations["content"]["text/event-stream"]["schema"]
    body = {"prompt": "p", "size": "128x128", "num_inference_steps": 10, "seed": 5}
    stream = {**body, "stream": True, "partial_images": 1}
    data = []
    with client.stream("POST", "/v1/images/generations", json=stream) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        data = [json.loads(line[5:]) for line in answer.iter_lines() if line.startswith("data:")]
    assert [event["type"] for event in data][-1] == "image_generation.completed", data
    validator = Draft202012Validator(schema)
    for event in data:
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, f"{event['type']} answered outside its schema: {errors}"
