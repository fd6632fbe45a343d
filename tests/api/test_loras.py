"""LoRAs over real HTTP: the listing endpoint, and a LoRA that acts on its request only."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.engine.helpers import save_random_lora
from tests.helpers import ServerProcess, decode_png, image_from_output, running_server

KEY = "lora-test-key"
FAST = {"width": 128, "height": 128, "num_inference_steps": 3, "seed": 77, "prompt": "a cat"}


@pytest.fixture(scope="module")
def lora_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("loras")
    save_random_lora(tiny_model, folder, "ink")
    (folder / "notes.txt").write_text("not a LoRA")
    (folder / ".partial.safetensors").write_bytes(b"")
    env = {"SDSERVE_API_KEYS": KEY, "SDSERVE_LORA_DIR": str(folder)}
    data_dir = tmp_path_factory.mktemp("lora-data")
    with running_server(data_dir, ["--model", str(tiny_model)], env) as server:
        yield server


@pytest.fixture
def http(lora_server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=lora_server.url, headers=headers, timeout=120) as client:
        yield client


def _deepinfra(http: httpx.Client, **fields: Any) -> np.ndarray[Any, Any]:
    r = http.post("/v1/inference/default", json={**FAST, **fields})
    assert r.status_code == 200, r.text
    return decode_png(base64.b64decode(r.json()["images"][0].partition(",")[2]))


def test_listing_names_each_safetensors_file_by_its_stem(
    http: httpx.Client, lora_server: ServerProcess
) -> None:
    assert http.get("/v1/loras").json() == {"loras": [{"name": "ink"}]}
    assert httpx.get(f"{lora_server.url}/v1/loras").status_code == 401


def test_a_lora_changes_its_request_and_never_the_next(http: httpx.Client) -> None:
    before = _deepinfra(http)
    with_lora = _deepinfra(http, lora="ink")
    after = _deepinfra(http)
    assert not np.array_equal(with_lora, before)
    assert np.array_equal(after, before)


def test_an_unknown_lora_is_a_400_naming_the_installed_ones(http: httpx.Client) -> None:
    r = http.post("/v1/inference/default", json={**FAST, "lora": "watercolour"})
    assert r.status_code == 400
    assert "lora" in r.json()["error"] and "installed: ink" in r.json()["error"]


def _modelslab(http: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"key": KEY, **{k: str(v) for k, v in FAST.items()}, **fields}
    return http.post("/api/v6/images/text2img", json=body)


def test_modelslab_lora_model_uses_the_registry(http: httpx.Client) -> None:
    plain = _modelslab(http).json()
    assert plain["status"] == "success", plain
    with_lora = _modelslab(http, lora_model="ink", lora_strength="0.8").json()
    assert with_lora["status"] == "success", with_lora
    pixels = [decode_png(http.get(a["output"][0]).content) for a in (plain, with_lora)]
    assert not np.array_equal(pixels[0], pixels[1])
    for fields, rule in [
        ({"lora_model": "nope"}, "installed: ink"),
        ({"lora_model": "ink,x"}, "one LoRA"),
    ]:
        answer = _modelslab(http, **fields).json()
        assert answer["status"] == "error" and "lora_model" in answer["message"], answer
        assert rule in answer["message"]


def _runpod(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v2/default/runsync", json={"input": {**FAST, **fields}})


def test_runpod_input_takes_a_lora_and_its_scale(http: httpx.Client) -> None:
    answers = [_runpod(http), _runpod(http, lora="ink", lora_scale=0.8)]
    for answer in answers:
        assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED", answer.text
    plain, with_lora = (image_from_output(http, a.json()["output"][0]["image"]) for a in answers)
    assert not np.array_equal(plain, with_lora)
    assert answers[1].json()["input"]["lora"] == "ink"
    refusals: list[tuple[dict[str, Any], str, str]] = [
        ({"lora": "nope"}, "input.lora", "installed: ink"),
        ({"lora": "ink", "lora_scale": 3}, "input.lora_scale", "less than or equal to 2"),
    ]
    for fields, field, rule in refusals:
        refused = _runpod(http, **fields)
        assert refused.status_code == 400
        [error] = refused.json()["errors"]
        assert error["field"] == field and rule in error["message"], error


def test_runpod_lora_and_its_scale_act_as_deepinfras(http: httpx.Client) -> None:
    def image(**fields: Any) -> np.ndarray[Any, Any]:
        answer = _runpod(http, **fields)
        assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED", answer.text
        return decode_png(http.get(answer.json()["output"][0]["image"]).content)

    assert np.array_equal(image(lora="ink"), _deepinfra(http, lora="ink"))
    assert np.array_equal(image(lora="ink", lora_scale=0), image())
    refused = _runpod(http, lora="nope", lora_scale=3)
    assert refused.status_code == 400
    fields = {e["field"]: e["message"] for e in refused.json()["errors"]}
    assert (
        list(fields) == ["input.lora_scale"]
        and "less than or equal to 2" in fields["input.lora_scale"]
    )
    unknown = _runpod(http, lora="nope")
    assert unknown.status_code == 400 and "installed: ink" in unknown.json()["error"]
