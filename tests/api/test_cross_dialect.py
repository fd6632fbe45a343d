"""One seed, one set of parameters: the same pixels through every dialect."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np

from tests.conftest import API_KEY
from tests.helpers import decode_png, image_from_output

PROMPT = "a red circle on a blue background"
NEGATIVE = "green"
SEED = 20261121


def _runpod(client: httpx.Client) -> np.ndarray[Any, Any]:
    body = {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "width": 128, "height": 128,
        "num_inference_steps": 3, "guidance_scale": 6.0, "seed": SEED, "scheduler": "K-LMS",
    }  # fmt: skip
    answer = client.post("/v2/default/runsync", json={"input": body}).json()
    assert answer["status"] == "COMPLETED", answer
    return image_from_output(client, answer["output"][0]["image"])


def _deepinfra(client: httpx.Client) -> np.ndarray[Any, Any]:
    body = {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "width": 128, "height": 128,
        "num_inference_steps": 3, "guidance_scale": 6.0, "seed": SEED,
    }  # fmt: skip
    answer = client.post("/v1/inference/stabilityai/stable-diffusion-2-1", json=body).json()
    assert answer["inference_status"]["status"] == "succeeded", answer
    return decode_png(base64.b64decode(answer["images"][0].partition(",")[2]))


def _modelslab(client: httpx.Client) -> np.ndarray[Any, Any]:
    body = {
        "key": API_KEY, "model_id": "default", "prompt": PROMPT, "negative_prompt": NEGATIVE,
        "width": "128", "height": "128", "samples": "1", "num_inference_steps": "3",
        "guidance_scale": 6, "seed": str(SEED), "scheduler": "LMSDiscreteScheduler",
    }  # fmt: skip
    answer = client.post("/api/v6/images/text2img", json=body).json()
    assert answer["status"] == "success", answer
    return image_from_output(client, answer["output"][0])


def _openai(client: httpx.Client) -> np.ndarray[Any, Any]:
    body = {
        "model": "stable-diffusion-v1", "prompt": PROMPT, "negative_prompt": NEGATIVE,
        "size": "128x128", "n": 1, "response_format": "b64_json", "seed": SEED,
        "num_inference_steps": 3, "guidance_scale": 6.0, "scheduler": "K-LMS",
    }  # fmt: skip
    answer = client.post("/v1/images/generations", json=body).json()
    return decode_png(base64.b64decode(answer["data"][0]["b64_json"]))


def test_same_seed_and_parameters_give_the_same_pixels_everywhere(client: httpx.Client) -> None:
    images = {
        name: render(client)
        for name, render in [
            ("runpod", _runpod),
            ("deepinfra", _deepinfra),
            ("modelslab", _modelslab),
            ("openai", _openai),
        ]
    }
    reference = images["runpod"]
    assert reference.shape == (128, 128, 3) and reference.std() > 0
    for name, pixels in images.items():
        assert np.array_equal(pixels, reference), f"{name} differs from runpod"


DIALECT_TAGS = {"runpod", "deepinfra", "modelslab", "openai"}


def _refs(schema: dict[str, Any]) -> list[str]:
    """The components a 200 answer's schema names: itself, or each member of a union."""
    if "$ref" in schema:
        return [schema["$ref"]]
    members = schema.get("oneOf") or schema.get("anyOf") or []
    return [m["$ref"] for m in members if "$ref" in m] if len(members) > 1 else []


def test_openapi_describes_the_answer_of_every_dialect_route(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    components = document["components"]["schemas"]
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if DIALECT_TAGS & set(operation.get("tags", []))
    ]
    tags = {tag for _, _, operation in operations for tag in operation["tags"]}
    assert tags == DIALECT_TAGS
    for method, path, operation in operations:
        # Bad input is a 400 in the dialect's shape (ModelsLab's at 200), never FastAPI's 422
        # (a 422 answers only an Idempotency-Key reused); every call checks a key.
        assert "HTTPValidationError" not in str(operation["responses"]), f"{method} {path}"
        assert {"401", "429"} <= set(operation["responses"]), f"{method} {path}"
        content = operation["responses"]["200"]["content"]
        if "application/json" not in content:  # a job's events: described in words
            assert list(content) == ["text/event-stream"], f"{method} {path}"
            assert "`done`" in operation["responses"]["200"]["description"]
            continue
        schema = content["application/json"]["schema"]
        refs = _refs(schema)
        assert refs, f"{method} {path} answers an undescribed body: {schema}"
        for ref in refs:
            name = ref.removeprefix("#/components/schemas/")
            assert components[name]["properties"], f"{method} {path}: {name} has no fields"
    ids = [operation["operationId"] for _, _, operation in operations]
    assert len(ids) == len(set(ids)), "operation ids must be unique for generated clients"
