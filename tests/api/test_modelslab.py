"""The ModelsLab dialect end to end: key in the body, v3/v4/v6 paths, fetch, future links."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import API_KEY, BACKENDS, OTHER_KEY, backend_running_server
from tests.helpers import (
    Receiver,
    ServerProcess,
    assert_batched_matches_alone,
    decode_png,
    image_from_output,
    png_data_uri,
    running_server,
)

FAST: dict[str, Any] = {"width": 128, "height": 128, "num_inference_steps": 2}
META_FIELDS = {
    "H", "W", "guidance_scale", "model", "n_samples", "negative_prompt", "prompt",
    "safety_checker", "seed", "steps",
}  # fmt: skip
SUFFIX = "masterpiece, best quality"
KEYS_ENV = {"SDSERVE_API_KEYS": f"{API_KEY},{OTHER_KEY}"}


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """A server that waits long enough for tiny jobs even on a busy machine; on both backends."""
    env = {**KEYS_ENV, "SDSERVE_MODELSLAB_WAIT_S": "240"}
    args = ["--model", str(tiny_model)]
    with backend_running_server(request, tmp_path_factory, args, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def impatient(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    """A server that never waits (every answer is `processing`) and enhances prompts."""
    env = {
        **KEYS_ENV,
        "SDSERVE_MODELSLAB_WAIT_S": "0",
        "SDSERVE_ENHANCE_PROMPT_SUFFIX": SUFFIX,
    }
    with running_server(tmp_path_factory.mktemp("data"), ["--model", str(tiny_model)], env) as srv:
        yield srv


@pytest.fixture
def ml(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client as ModelsLab's docs write it: no auth header, the key in each body."""
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def call(client: httpx.Client, path: str, **fields: object) -> dict[str, Any]:
    body = {"key": API_KEY, "prompt": "a red circle", **FAST, **fields}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def generate(client: httpx.Client, path: str = "/api/v3/text2img", **fields: object) -> Any:
    body = call(client, path, **fields)
    assert body["status"] == "success", body
    return body


def pixels(client: httpx.Client, output: str) -> np.ndarray[Any, Any]:
    return image_from_output(client, output)


def _init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("path", "fetch"),
    [
        ("/api/v3/text2img", "/api/v3/fetch"),
        ("/api/v4/dreambooth", "/api/v4/dreambooth/fetch"),
        ("/api/v6/images/text2img", "/api/v6/images/fetch"),
    ],
)
def test_each_api_version_generates_and_fetches(ml: httpx.Client, path: str, fetch: str) -> None:
    body = generate(ml, path, seed=3)
    assert isinstance(body["id"], int)
    assert isinstance(body["generationTime"], float) and body["generationTime"] > 0
    assert set(body["meta"]) >= META_FIELDS
    assert body["meta"]["seed"] == 3 and body["meta"]["model"] == "default"
    [url] = body["output"]
    # sdserve's own signed link, or the S3 store's presigned one
    assert url.startswith("http://127.0.0.1") and ("sig=" in url or "X-Amz-Signature=" in url)
    assert pixels(httpx.Client(), url).shape == (128, 128, 3)  # signed: no key needed
    by_path = ml.post(f"{fetch}/{body['id']}", json={"key": API_KEY}).json()
    by_body = ml.post(fetch, json={"key": API_KEY, "request_id": str(body["id"])}).json()
    for fetched in (by_path, by_body):
        assert fetched["status"] == "success" and fetched["id"] == body["id"]
        assert np.array_equal(pixels(ml, fetched["output"][0]), pixels(ml, url))


def test_string_values_nulls_and_unknown_fields_are_accepted(ml: httpx.Client) -> None:
    body = generate(
        ml,
        "/api/v4/dreambooth",
        width="128", height="128", samples="2", num_inference_steps="2", guidance_scale="6.5",
        seed="11", safety_checker="no", enhance_prompt="no", base64="no", webhook=None,
        track_id=None, init_image="", mask_image=None, negative_prompt=None, model_id=None,
        lora_model=None, embeddings_model=None, upscale="no", multi_lingual="no",
        panorama="no", self_attention="no", scheduler="UniPCMultistepScheduler",
    )  # fmt: skip
    meta = body["meta"]
    assert len(body["output"]) == 2
    assert (meta["W"], meta["H"], meta["n_samples"], meta["steps"]) == (128, 128, 2, 2)
    assert (meta["seed"], meta["guidance_scale"], meta["negative_prompt"]) == (11, 6.5, "")
    assert meta["scheduler"] == "LMSDiscreteScheduler"  # not one sdserve runs: the default
    assert "track_id" not in body


@pytest.mark.parametrize(
    ("scheduler", "runpod_name"),
    [(None, "K-LMS"), ("EulerAncestralDiscreteScheduler", "EULER-A"), ("DDIMScheduler", "DDIM")],
)
def test_seed_reproduces_across_modelslab_and_runpod(
    ml: httpx.Client, client: httpx.Client, scheduler: str | None, runpod_name: str
) -> None:
    body = generate(
        ml, "/api/v6/images/text2img", model_id="stable-diffusion-v1", seed=1234, samples=2,
        scheduler=scheduler, negative_prompt="blurry",
    )  # fmt: skip
    assert body["meta"]["scheduler"] == (scheduler or "LMSDiscreteScheduler")
    runpod_input = {
        "prompt": "a red circle", **FAST, "negative_prompt": "blurry", "seed": 1235,
        "scheduler": runpod_name,
    }  # fmt: skip
    r = client.post("/v2/default/runsync", json={"input": runpod_input})
    assert r.json()["status"] == "COMPLETED", r.text
    runpod_pixels = pixels(client, r.json()["output"][0]["image"])
    assert_batched_matches_alone(pixels(ml, body["output"][1]), runpod_pixels)  # seed + 1


def test_base64_output_is_the_same_png(ml: httpx.Client) -> None:
    as_url = generate(ml, seed=21)["output"][0]
    inline = generate(ml, seed=21, base64="yes")
    assert inline["meta"]["base64"] == "yes"
    data = base64.b64decode(inline["output"][0], validate=True)
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(decode_png(data), pixels(ml, as_url))


def test_safety_checker_yes_is_accepted(ml: httpx.Client) -> None:
    body = generate(ml, safety_checker="yes")
    assert body["meta"]["safety_checker"] == "yes"
    assert len(body["output"]) == len(body["nsfw_content_detected"]) == 1


def test_img2img_needs_and_uses_init_image(ml: httpx.Client) -> None:
    init = png_data_uri(_init_image().resize((200, 150)))
    body = generate(ml, "/api/v6/images/img2img", init_image=init, strength="0.5")
    assert body["meta"]["strength"] == 0.5
    assert pixels(ml, body["output"][0]).shape == (128, 128, 3)
    error = call(ml, "/api/v3/img2img")
    assert error["status"] == "error" and "init_image" in error["message"]


@pytest.mark.parametrize(
    "path", ["/api/v3/inpaint", "/api/v4/dreambooth", "/api/v6/images/inpaint"]
)
def test_inpainting_repaints_white_and_keeps_black(ml: httpx.Client, path: str) -> None:
    init = _init_image()
    mask = Image.new("L", (128, 128), 0)  # black: kept
    mask.paste(255, (32, 32, 96, 96))  # white: repainted
    body = generate(
        ml, path, init_image=png_data_uri(init), mask_image=png_data_uri(mask),
        prompt_strength=1.0, num_inference_steps=3,
    )  # fmt: skip
    out = pixels(ml, body["output"][0])
    keep = np.asarray(mask) == 0
    original = np.asarray(init)
    assert np.array_equal(out[keep], original[keep])
    assert not np.array_equal(out[~keep], original[~keep])


def test_processing_then_fetch_and_future_links(impatient: ServerProcess) -> None:
    ml = httpx.Client(base_url=impatient.url, timeout=60)
    body = call(ml, "/api/v6/images/text2img", num_inference_steps=8, samples=2, track_id="t-1")
    assert body["status"] == "processing", body
    assert isinstance(body["id"], int) and body["track_id"] == "t-1"
    assert isinstance(body["eta"], int | float) and body["eta"] >= 0
    assert body["fetch_result"] == f"{impatient.url}/api/v6/images/fetch/{body['id']}"
    future = body["future_links"]
    assert len(future) == 2 and all("sig=" in url for url in future)
    assert httpx.get(future[0]).status_code == 404  # not made yet
    deadline = time.time() + 180
    fetched = body
    while fetched["status"] == "processing" and time.time() < deadline:
        time.sleep(0.2)
        fetched = ml.post(body["fetch_result"], json={"key": API_KEY}).json()
    assert fetched["status"] == "success", fetched
    assert fetched["id"] == body["id"] and fetched["track_id"] == "t-1"
    for url, output in zip(future, fetched["output"], strict=True):
        assert httpx.get(url).content == httpx.get(output).content
        assert pixels(ml, url).shape == (128, 128, 3)


@pytest.mark.parametrize(
    ("enhance", "prompt"),
    [("yes", f"a fox, {SUFFIX}"), ("no", "a fox"), (None, f"a fox, {SUFFIX}")],
)
def test_enhance_prompt_appends_the_configured_suffix(
    impatient: ServerProcess, enhance: str | None, prompt: str
) -> None:
    ml = httpx.Client(base_url=impatient.url, timeout=60)
    body = call(
        ml, "/api/v3/text2img", prompt="a fox", num_inference_steps=1, enhance_prompt=enhance
    )
    assert body["status"] == "processing"
    assert body["meta"]["prompt"] == prompt


def test_track_id_is_echoed_and_sent_with_the_webhook(ml: httpx.Client) -> None:
    receiver = Receiver()
    try:
        body = generate(ml, webhook=receiver.url, track_id=42, seed=8)
        assert body["track_id"] == 42
        [posted] = receiver.wait(1)
    finally:
        receiver.http.shutdown()
    assert posted["status"] == "success" and posted["track_id"] == 42
    assert posted["id"] == body["id"] and posted["meta"]["seed"] == 8
    assert np.array_equal(pixels(ml, posted["output"][0]), pixels(ml, body["output"][0]))


@pytest.mark.parametrize("path", ["/api/v3/text2img", "/api/v6/images/fetch/1"])
def test_bad_or_missing_key_is_a_401(ml: httpx.Client, path: str) -> None:
    for key in ("wrong-key", None):
        r = ml.post(path, json={"key": key, "prompt": "p"})
        assert r.status_code == 401, r.text
        body = r.json()
        assert body["status"] == "error" and "key" in body["message"].lower()


INIT = png_data_uri(Image.new("RGB", (128, 128)))


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"samples": 5}, "samples", "less than or equal to 4"),
        ({"samples": "0"}, "samples", "greater than or equal to 1"),
        ({"num_inference_steps": 51}, "num_inference_steps", "less than or equal to 50"),
        ({"guidance_scale": "25"}, "guidance_scale", "less than or equal to 20"),
        ({"width": 1024, "height": 1024}, "width", "1024x768 or 768x1024"),
        ({"width": 768, "height": 1280}, "height", "less than or equal to 1024"),
        ({"width": 500}, "width", "multiple of 8 between 128 and 768"),
        ({"width": "wide"}, "width", "valid integer"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt_strength": 2}, "prompt_strength", "less than or equal to 1"),
        ({"safety_checker": "maybe"}, "safety_checker", '"yes" or "no"'),
        ({"base64": "sure"}, "base64", '"yes" or "no"'),
        ({"prompt": None}, "prompt", "valid string"),
        ({"prompt": "  "}, "prompt", "must not be blank"),
        ({"webhook": "ftp://x"}, "webhook", "URL scheme"),
        ({"init_image": "not base64!!"}, "init_image", "data URI or base64"),
        ({"mask_image": INIT}, "mask_image", "needs init_image"),
        ({"scheduler": "IPNDMScheduler", "init_image": INIT}, "scheduler", "cannot start from"),
        ({"model_id": "sdxl"}, "model_id", "names and aliases: default, stabilityai/"),
    ],
)
def test_bad_fields_are_errors_naming_the_field(
    ml: httpx.Client, fields: dict[str, object], field: str, rule: str
) -> None:
    body = call(ml, "/api/v3/text2img", **fields)  # HTTP 200, as ModelsLab answers
    assert body["status"] == "error", body
    assert field in body["message"] and rule in body["message"], body
    assert any(e["field"] == field for e in body["errors"])


def test_fetch_of_unknown_or_anothers_id_is_an_error(ml: httpx.Client) -> None:
    job_id = generate(ml)["id"]
    for key, request_id in [(OTHER_KEY, job_id), (API_KEY, 10**9), (API_KEY, "abc")]:
        r = ml.post(f"/api/v3/fetch/{request_id}", json={"key": key})
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "error" and "request_id" in body["message"], body
        assert "output" not in body
    missing = ml.post("/api/v6/images/fetch", json={"key": API_KEY}).json()
    assert missing["status"] == "error" and "request_id" in missing["message"]


FUZZ_FIELDS = [
    "prompt", "negative_prompt", "width", "height", "samples", "num_inference_steps",
    "guidance_scale", "seed", "safety_checker", "enhance_prompt", "prompt_strength", "strength",
    "init_image", "mask_image", "base64", "webhook", "track_id", "scheduler", "model_id",
    "lora_model",
]  # fmt: skip
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["512", "128", "yes", "no", "DDIMScheduler", "data:image/png;base64,"])
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
_bodies = st.dictionaries(st.sampled_from([*FUZZ_FIELDS, "unknown"]), _values, max_size=8)


@settings(max_examples=100, deadline=None)
@given(body=_bodies)
def test_any_body_gets_an_answer_never_a_500(
    impatient: ServerProcess, body: dict[str, Any]
) -> None:
    # The impatient server answers at once, so valid bodies cost a queued job, cancelled here.
    r = httpx.post(f"{impatient.url}/api/v6/images/text2img", json={**body, "key": API_KEY})
    assert r.status_code == 200, (r.status_code, r.text)
    answer = r.json()
    assert answer["status"] in ("processing", "error"), answer
    if answer["status"] == "error":
        assert answer["message"] and answer["errors"][0]["field"]
    else:
        job_id = answer["meta"]["file_prefix"]
        httpx.post(f"{impatient.url}/v2/default/cancel/{job_id}", headers=impatient.auth)
