"""The OpenAI images dialect, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

from sdserve.api.errors import ApiError
from sdserve.api.openai_protocol import render_error
from tests.conftest import API_KEY, BACKENDS, backend_running_server
from tests.helpers import ServerProcess, assert_batched_matches_alone, decode_png

FAST: dict[str, Any] = {"size": "128x128", "extra_body": {"num_inference_steps": 2}}
MB = 1024 * 1024


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    broken_model: Path,
) -> Iterator[ServerProcess]:
    """The tiny model as `default`, and a `broken` model whose weights do not exist; on both
    backends."""
    args = ["--model", str(tiny_model), "--model", f"broken={broken_model}"]
    env = {"SDSERVE_API_KEYS": API_KEY}
    with backend_running_server(request, tmp_path_factory, args, env) as srv:
        yield srv


@pytest.fixture
def sdk(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, timeout=120) as client:
        yield client


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gradient(size: int = 128) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1)
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def b64_pixels(value: str | None) -> np.ndarray[Any, Any]:
    assert value is not None
    return decode_png(base64.b64decode(value))


def test_generate_urls_serve_pngs(sdk: OpenAI, server: ServerProcess) -> None:
    result = sdk.images.generate(prompt="a red circle", n=2, response_format="url", **FAST)
    assert result.created > 0 and result.data is not None and len(result.data) == 2
    for image in result.data:
        # sdserve's own signed link, or the S3 store's presigned one
        assert image.url is not None and image.url.startswith("http://127.0.0.1")
        r = httpx.get(image.url)  # signed: no API key needed
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (128, 128)
        assert image.revised_prompt == "a red circle"


def test_generate_b64_json_and_seeds(sdk: OpenAI) -> None:
    body = {"num_inference_steps": 2, "seed": 41, "negative_prompt": "blue"}
    pair = sdk.images.generate(
        prompt="a cat", n=2, size="128x128", response_format="b64_json", extra_body=body
    )
    assert pair.data is not None and pair.size == "128x128"
    # Each image's seed comes back beside it (an extension OpenAI clients keep as an extra).
    assert [(image.model_extra or {}).get("seed") for image in pair.data] == [41, 42]
    second = pair.data[1].b64_json
    assert Image.open(io.BytesIO(base64.b64decode(second or ""))).format == "PNG"
    body["seed"] = 42
    alone = sdk.images.generate(
        prompt="a cat", size="128x128", response_format="b64_json", extra_body=body
    )
    assert alone.data is not None and alone.data[0].b64_json is not None
    assert_batched_matches_alone(b64_pixels(second), b64_pixels(alone.data[0].b64_json))


def test_default_size_is_512(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/v1/images/generations",
        json={"prompt": "p", "n": None, "num_inference_steps": 1, "response_format": "b64_json"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert b64_pixels(r.json()["data"][0]["b64_json"]).shape == (512, 512, 3)


def test_edit_repaints_only_transparent_mask_pixels(sdk: OpenAI) -> None:
    source = gradient()
    alpha = np.full((128, 128), 255, dtype=np.uint8)
    alpha[:, :64] = 0  # the left half is edited
    mask = Image.fromarray(np.zeros((128, 128, 3), dtype=np.uint8), "RGB")
    mask.putalpha(Image.fromarray(alpha, "L"))
    result = sdk.images.edit(
        image=("in.png", png(source), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a dog",
        response_format="b64_json",
        **FAST,
    )
    assert result.data is not None and len(result.data) == 1
    out = b64_pixels(result.data[0].b64_json)
    original = np.asarray(source)
    assert np.array_equal(out[:, 64:], original[:, 64:])
    assert not np.array_equal(out[:, :64], original[:, :64])


def test_edit_without_mask_is_image_to_image(sdk: OpenAI) -> None:
    result = sdk.images.edit(
        image=("in.png", png(gradient()), "image/png"), prompt="a dog", n=2, **FAST
    )
    assert result.data is not None and len(result.data) == 2
    assert all(image.url for image in result.data)


def test_models_list_names_every_model_and_alias(sdk: OpenAI) -> None:
    models = {model.id: model for model in sdk.models.list()}
    assert {"default", "stable-diffusion-v1", "stabilityai/stable-diffusion-2-1", "broken"} <= set(
        models
    )
    assert all(m.object == "model" and m.owned_by == "sdserve" for m in models.values())
    assert sdk.models.retrieve("stable-diffusion-v1").id == "stable-diffusion-v1"


def test_deepinfra_openai_base_answers_as_v1(sdk: OpenAI, server: ServerProcess) -> None:
    """DeepInfra's users point the client at its OpenAI-compatible base, /v1/openai."""
    base = f"{server.url}/v1/openai"
    with OpenAI(base_url=base, api_key=API_KEY, timeout=120) as deepinfra:
        body = {"num_inference_steps": 2, "seed": 7}
        kwargs: dict[str, Any] = {"prompt": "a red circle", "size": "128x128", "extra_body": body}
        there = deepinfra.images.generate(response_format="b64_json", **kwargs)
        here = sdk.images.generate(response_format="b64_json", **kwargs)
        assert there.data is not None and here.data is not None
        assert [(image.model_extra or {}).get("seed") for image in there.data] == [7]
        assert np.array_equal(b64_pixels(there.data[0].b64_json), b64_pixels(here.data[0].b64_json))
        linked = deepinfra.images.generate(response_format="url", **kwargs)
        assert linked.data is not None and linked.data[0].url is not None
        assert httpx.get(linked.data[0].url).headers["content-type"] == "image/png"
        assert [m.id for m in deepinfra.models.list()] == [m.id for m in sdk.models.list()]
        assert deepinfra.models.retrieve("stable-diffusion-v1").id == "stable-diffusion-v1"
        with pytest.raises(openai.BadRequestError) as caught:
            deepinfra.images.generate(prompt="p", size="100x100")
        assert caught.value.param == "size" and caught.value.type == "invalid_request_error"
        with pytest.raises(openai.NotFoundError) as missing:
            deepinfra.models.retrieve("dall-e-3")
        assert missing.value.code == "model_not_found"
    with OpenAI(base_url=base, api_key="wrong") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.models.list()


@pytest.mark.parametrize(
    ("kwargs", "param", "rule"),
    [
        ({"size": "100x100"}, "size", "multiple of 8 between 128 and 768"),
        ({"size": "4096x128"}, "size", "(got 4096)"),
        ({"size": "big"}, "size", "must be WIDTHxHEIGHT"),
        ({"n": 11}, "n", "less than or equal to 10"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"response_format": "jpeg"}, "response_format", "'url' or 'b64_json'"),
        ({"extra_body": {"colour": "red"}}, "colour", "unknown field"),
        ({"extra_body": {"scheduler": "FOO"}}, "scheduler", "must name a sampler: one of DDIM"),
        ({"prompt": "  "}, "prompt", "must not be blank"),
    ],
)
def test_invalid_generation_is_a_400_naming_the_param(
    sdk: OpenAI, kwargs: dict[str, Any], param: str, rule: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(**{"prompt": "p", **kwargs})
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert rule in caught.value.message


def test_edit_errors_name_the_param(sdk: OpenAI) -> None:
    opaque = ("mask.png", png(Image.new("RGB", (128, 128))), "image/png")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.edit(image=("in.png", png(gradient()), "image/png"), mask=opaque, prompt="p")
    assert caught.value.param == "mask" and "alpha channel" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.edit(image=("in.png", b"not an image", "image/png"), prompt="p", **FAST)
    assert caught.value.param == "image" and "not a readable image" in caught.value.message
    two = [("a.png", png(gradient()), "image/png")] * 2
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.edit(image=two, prompt="p", **FAST)
    assert caught.value.param == "image" and "takes one image (got 2)" in caught.value.message


def test_unknown_model_is_a_404_naming_the_models(sdk: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.images.generate(prompt="p", model="dall-e-3", **FAST)
    assert caught.value.code == "model_not_found"
    assert "dall-e-3" in caught.value.message and "stable-diffusion-v1" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("dall-e-3")


def test_missing_or_wrong_key_is_a_401(server: ServerProcess) -> None:
    wrong = OpenAI(base_url=f"{server.url}/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.code == "invalid_api_key"
    for path in ("/v1/models", "/v1/images/generations"):
        r = httpx.request(
            "GET" if path.endswith("models") else "POST", server.url + path, json={"prompt": "p"}
        )
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert "missing API key" in r.json()["error"]["message"]


def test_raw_error_shape_and_413(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(f"{server.url}/v1/images/generations", json={"n": 3}, headers=auth)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "prompt"
    assert error["message"] == "prompt: field required"
    r = httpx.post(
        f"{server.url}/v1/images/generations",
        content=b"{not json",
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    big = {"image": ("in.png", b"\0" * (11 * MB), "image/png")}
    r = httpx.post(f"{server.url}/v1/images/edits", data={"prompt": "p"}, files=big, headers=auth)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "request body is larger than 10 MB"


def test_failed_generation_is_a_500_not_retried(sdk: OpenAI, server: ServerProcess) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(prompt="p", model="broken", **FAST)
    error = caught.value
    assert error.code == "generation_failed" and error.type == "server_error"
    assert "image generation failed" in error.message and "Traceback" not in error.message
    assert error.response.headers["x-should-retry"] == "false"


def test_a_failed_streamed_generation_ends_the_stream_with_an_error(sdk: OpenAI) -> None:
    stream = sdk.images.generate(prompt="p", model="broken", stream=True, **FAST)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.code == "generation_failed", caught.value
    assert "image generation failed" in caught.value.message


def test_queue_full_is_an_openai_rate_limit() -> None:
    error = ApiError(429, "the queue is full", headers={"Retry-After": "5"})
    response = render_error(error)
    assert response.status_code == 429 and response.headers["retry-after"] == "5"
    assert json.loads(bytes(response.body))["error"] == {
        "message": "the queue is full",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
