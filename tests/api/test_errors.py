"""Bad input and auth: clear 4xx answers naming the field and the rule, never a 500."""

from __future__ import annotations

import base64
import struct
import zlib

import httpx
import pytest
from PIL import Image

from tests.conftest import API_KEY, OTHER_KEY
from tests.helpers import ServerProcess, png_data_uri, wait_for

MB = 1024 * 1024
MASK_ONLY = "<a valid mask, no init_image>"
INIT = png_data_uri(Image.new("RGB", (128, 128)))


def png_header(width: int, height: int) -> str:
    """Base64 of a PNG that claims `width` x `height` pixels in its header (a decompression
    bomb's first bytes: whoever decodes it finds no pixel data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + ihdr + iend).decode()


def post_input(client: httpx.Client, input: dict[str, object]) -> httpx.Response:
    return client.post("/v2/default/run", json={"input": {"prompt": "p", **input}})


@pytest.mark.parametrize(
    ("input", "field", "rule"),
    [
        ({"width": 500}, "input.width", "multiple of 8 between 128 and"),
        ({"height": 64}, "input.height", "multiple of 8 between 128 and"),
        ({"width": 4096}, "input.width", "(got 4096)"),
        ({"guidance_scale": 25}, "input.guidance_scale", "less than or equal to 20"),
        ({"guidance_scale": 0.5}, "input.guidance_scale", "greater than or equal to 1"),
        ({"num_inference_steps": 0}, "input.num_inference_steps", "greater than or equal to 1"),
        ({"num_inference_steps": 501}, "input.num_inference_steps", "less than or equal to 500"),
        ({"num_outputs": 11}, "input.num_outputs", "less than or equal to 10"),
        ({"prompt_strength": 1.5}, "input.prompt_strength", "less than or equal to 1"),
        ({"scheduler": "FOO"}, "input.scheduler", "must name a sampler: one of DDIM"),
        ({"seed": -1}, "input.seed", "greater than or equal to 0"),
        ({"seed": "abc"}, "input.seed", "valid integer"),
        ({"prompt": ""}, "input.prompt", "at least 1 character"),
        ({"prompt": "   "}, "input.prompt", "must not be blank"),
        (
            {"prompt": "\x00"},
            "input.prompt",
            "must not contain control characters (got U+0000 at position 0)",
        ),
        ({"prompt": "a\x1bb"}, "input.prompt", "(got U+001B at position 1)"),
        ({"negative_prompt": "x\x7f"}, "input.negative_prompt", "(got U+007F at position 1)"),
        ({"prompt": "a" * 4001}, "input.prompt", "must be at most 4000 characters (got 4001)"),
        ({"negative_prompt": "n" * 4001}, "input.negative_prompt", "at most 4000 characters"),
        ({"colour": "red"}, "input.colour", "unknown field"),
        ({"init_image": "not base64!!"}, "input.init_image", "http(s) URL, a data URI or base64"),
        ({"init_image": "aGVsbG8="}, "input.init_image", "not a readable image"),
        (
            {"init_image": png_header(20000, 20000)},
            "input.init_image",
            "image is too large (20000 x 20000, at most 64000000 pixels)",
        ),
        ({"init_image": png_header(9000, 9000)}, "input.init_image", "(9000 x 9000, at most"),
        ({"init_image": "http://127.0.0.1:9/x.png"}, "input.init_image", "could not fetch"),
        ({"scheduler": "IPNDM", "init_image": INIT}, "input.scheduler", "cannot start from"),
        ({"mask": MASK_ONLY}, "input.mask", "needs input.init_image"),
    ],
)
def test_invalid_field_is_a_400_naming_it(
    client: httpx.Client, input: dict[str, object], field: str, rule: str
) -> None:
    if input.get("mask") == MASK_ONLY:
        input = {"mask": png_data_uri(Image.new("L", (128, 128)))}
    r = post_input(client, input)
    assert r.status_code == 400, r.text
    body = r.json()
    assert field in body["error"] and rule in body["error"], body
    assert any(e["field"] == field for e in body["errors"])
    assert body["error"].count("(got ") <= 1, body  # the value is quoted once


def test_several_bad_fields_are_all_named(client: httpx.Client) -> None:
    r = post_input(client, {"guidance_scale": 99, "num_outputs": 0})
    assert r.status_code == 400
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"input.guidance_scale", "input.num_outputs"}


def test_every_rule_of_the_model_is_checked_at_once(client: httpx.Client) -> None:
    bad = {"width": 100, "height": 64, "scheduler": "IPNDM", "init_image": INIT, "prompt": "a\x00"}
    r = post_input(client, bad)
    assert r.status_code == 400, r.text
    body = r.json()
    fields = [e["field"] for e in body["errors"]]
    assert fields == ["input.prompt", "input.width", "input.height", "input.scheduler"], body
    assert all(f in body["error"] for f in fields)


def test_the_model_s_rules_are_reported_beside_the_schema_s_in_every_dialect(
    client: httpx.Client,
) -> None:
    # A schema error (steps, guidance) and a model rule (the size) in one request: both named.
    runpod = post_input(client, {"num_inference_steps": 0, "width": 100, "scheduler": "IPNDM"})
    assert runpod.status_code == 400, runpod.text
    fields = [e["field"] for e in runpod.json()["errors"]]
    assert fields == ["input.num_inference_steps", "input.width"], runpod.text
    assert "input.width: must be a multiple of 8" in runpod.json()["error"]

    deepinfra = client.post(
        "/v1/inference/default", json={"prompt": "p", "num_inference_steps": 0, "height": 100}
    )
    assert deepinfra.status_code == 400, deepinfra.text
    assert [e["field"] for e in deepinfra.json()["errors"]] == ["num_inference_steps", "height"]

    openai = client.post("/v1/images/generations", json={"prompt": "p", "n": 0, "size": "100x128"})
    assert openai.status_code == 400, openai.text
    assert "size: must be a multiple of 8" in openai.json()["error"]["message"], openai.text
    assert "n: " in openai.json()["error"]["message"], openai.text

    body = {"key": API_KEY, "prompt": "p", "samples": 0, "width": "100", "height": "128"}
    modelslab = client.post("/api/v6/images/text2img", json=body).json()
    assert modelslab["status"] == "error", modelslab
    assert "samples" in modelslab["message"] and "width: must be a multiple" in modelslab["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": {}}, "input.prompt"),
        ({"input": {"prompt": "p"}, "extra": 1}, "extra"),
        ({"input": {"prompt": "p"}, "webhook": "ftp://x"}, "webhook"),
        ({"input": {"prompt": "p"}, "policy": {"ttl": -5}}, "policy.ttl"),
        ({"input": {"prompt": "p"}, "policy": {"executionTimeout": "x"}}, "policy.executionTimeout"),  # noqa: E501
        ({"input": "a cat"}, "input"),
    ],
)  # fmt: skip
def test_invalid_body_is_a_400(client: httpx.Client, body: object, field: str) -> None:
    r = client.post("/v2/default/run", json=body)
    assert r.status_code == 400, r.text
    assert any(e["field"] == field for e in r.json()["errors"]), r.json()


def test_invalid_json_is_a_400(client: httpx.Client) -> None:
    r = client.post(
        "/v2/default/run", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]


def test_runsync_wait_out_of_range(client: httpx.Client) -> None:
    r = client.post(
        "/v2/default/runsync?wait=300001", json={"input": {"prompt": "p", "width": 128}}
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "wait"


def test_body_limits(client: httpx.Client) -> None:
    blob = "A" * (11 * MB)
    r = client.post("/v2/default/run", json={"input": {"prompt": "p", "init_image": blob}})
    assert r.status_code == 413
    # /runsync allows 20 MB: the same body gets past the size check to validation
    r = client.post("/v2/default/runsync", json={"input": {"prompt": "p", "init_image": blob}})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "input.init_image"
    r = client.post("/v2/default/runsync", json={"input": {"prompt": "p", "x": "A" * 21 * MB}})
    assert r.status_code == 413


def test_unknown_job_and_endpoint_are_404(client: httpx.Client) -> None:
    assert client.get("/v2/default/status/nope").status_code == 404
    assert client.post("/v2/default/cancel/nope").status_code == 404
    assert client.post("/v2/default/retry/nope").status_code == 404
    assert client.get("/v2/default/stream/nope").status_code == 404
    r = client.post("/v2/no-such-model/run", json={"input": {"prompt": "p"}})
    assert r.status_code == 404
    assert "no-such-model" in r.json()["error"] and "default" in r.json()["error"]
    assert client.get("/v2/no-such-model/health").status_code == 404
    assert client.get("/v3/default/health").status_code == 404


def test_missing_or_wrong_key_is_401(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}):
        r = httpx.post(
            f"{server.url}/v2/default/run", json={"input": {"prompt": "p"}}, headers=headers
        )
        assert r.status_code == 401, headers
        assert "error" in r.json()
    r = httpx.get(f"{server.url}/v2/default/health")
    assert r.status_code == 401


def test_bare_key_is_accepted(server: ServerProcess) -> None:
    r = httpx.get(f"{server.url}/v2/default/health", headers={"Authorization": API_KEY})
    assert r.status_code == 200


def test_another_keys_job_is_invisible(client: httpx.Client, server: ServerProcess) -> None:
    r = client.post(
        "/v2/default/run",
        json={"input": {"prompt": "p", "width": 128, "height": 128, "num_inference_steps": 2}},
    )
    job_id = r.json()["id"]
    other = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    for method, path in [
        ("GET", f"/v2/default/status/{job_id}"),
        ("POST", f"/v2/default/cancel/{job_id}"),
        ("POST", f"/v2/default/retry/{job_id}"),
        ("GET", f"/v2/default/stream/{job_id}"),
    ]:
        assert other.request(method, path).status_code == 404, path
    assert wait_for(client, f"/v2/default/status/{job_id}", {"COMPLETED"})["status"] == "COMPLETED"


def test_modelslab_fetch_of_an_id_past_64_bits_is_unknown(server: ServerProcess) -> None:
    url = f"{server.url}/api/v6/images/fetch"
    unknown = httpx.post(f"{url}/1000000000", json={"key": API_KEY}).json()
    for request in [
        httpx.post(f"{url}/{2**63}", json={"key": API_KEY}),
        httpx.post(url, json={"key": API_KEY, "request_id": 2**63}),
        httpx.post(url, json={"key": API_KEY, "request_id": -(2**63) - 1}),
    ]:
        assert request.status_code == 200, request.text  # ModelsLab answers errors with 200
        body = request.json()
        assert body["status"] == "error" and "request_id" in body["message"], body
        assert body.keys() == unknown.keys()


def test_modelslab_key_with_a_lone_surrogate_is_401(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/api/v6/images/text2img",
        content=b'{"key": "\\ud800", "prompt": "x"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 401, r.text
    assert "invalid API key" in r.text


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "path",
    [
        "/v1/inference/default",
        "/v2/default/run",
        "/v1/images/generations",
        "/api/v6/images/text2img",
        "/api/v6/images/fetch",
    ],
)
def test_deeply_nested_json_is_a_4xx(client: httpx.Client, path: str) -> None:
    r = client.post(path, content=DEEP_JSON, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 401, 422), r.text  # ModelsLab's errors are 200s
    body = r.json()
    assert "error" in body or body.get("status") == "error", body


def test_prompt_with_a_lone_surrogate_is_a_400(client: httpx.Client) -> None:
    r = client.post(
        "/v2/default/run",
        content=b'{"input": {"prompt": "a\\udc00"}}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["input.prompt"], r.json()


def test_long_prompt_with_tabs_and_newlines_is_accepted(client: httpx.Client) -> None:
    prompt = "a\tcat\r\non a mat " + "x" * (4000 - 16)
    assert len(prompt) == 4000
    r = post_input(
        client, {"prompt": prompt, "width": 128, "height": 128, "num_inference_steps": 1}
    )
    assert r.status_code == 200, r.text
    client.post(f"/v2/default/cancel/{r.json()['id']}")


@pytest.mark.parametrize(
    ("fields", "param", "rule"),
    [
        ({"prompt": "\x00"}, "prompt", "must not contain control characters (got U+0000"),
        ({"prompt": "p" * 4001}, "prompt", "must be at most 4000 characters (got 4001)"),
        ({"prompt": "p", "negative_prompt": "\x08"}, "negative_prompt", "(got U+0008"),
    ],
)
def test_openai_prompt_rules_name_the_field(
    client: httpx.Client, fields: dict[str, str], param: str, rule: str
) -> None:
    r = client.post("/v1/images/generations", json={"model": "default", **fields})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and rule in error["message"], error


NESTED = "a " + "(" * 9 + "red" + ")" * 9 + " circle"
"""Nine levels: one past what compel may parse (its parse grows about 4x a level)."""


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("prompt", {"prompt": NESTED}),
        ("negative_prompt", {"prompt": "a circle", "negative_prompt": "blur- " * 17}),
    ],
)
def test_a_prompt_costly_for_compel_is_a_400_when_compel_parses_it(
    client: httpx.Client, field: str, fields: dict[str, str]
) -> None:
    r = client.post("/v1/inference/default", json={**fields, "use_compel": True})
    assert r.status_code == 400, r.text
    [error] = r.json()["errors"]
    assert error["field"] == field and "when compel weights it" in error["message"], error


def test_the_same_prompt_without_compel_is_plain_text(client: httpx.Client) -> None:
    r = post_input(client, {"prompt": NESTED, "width": 128, "height": 128})
    assert r.status_code == 200, r.text
    client.post(f"/v2/default/cancel/{r.json()['id']}")


def test_a_runpod_endpoint_named_like_an_openai_path_answers_in_runpod_shape(
    client: httpx.Client,
) -> None:
    runpod = client.post("/v1/images/run", json={"input": {"prompt": "p"}})
    assert runpod.status_code == 404
    assert runpod.json()["error"].startswith("endpoint 'images' not found")
    # OpenAI's own calls keep OpenAI's shape.
    openai = client.post("/v1/images/generations", json={"prompt": ""})
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "prompt"
