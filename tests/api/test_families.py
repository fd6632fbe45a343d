"""Every family served by one `sdserve serve`, through the RunPod, OpenAI, DeepInfra and
ModelsLab dialects: modes, seeds, LoRA, each model's defaults, and every family's refusals."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any, get_args

import httpx
import numpy as np
import pytest
from PIL import Image
from sd_parsers import ParserManager

from sdserve.families import FamilyName
from tests.conftest import FamilyModels, shared_env
from tests.engine.helpers import save_family_lora
from tests.helpers import (
    ServerProcess,
    assert_batched_matches_alone,
    decode_png,
    png_data_uri,
    running_server,
)
from tests.pg import fresh_database

FAMILIES: list[FamilyName] = [f for f in get_args(FamilyName) if f != "sd1"]
"""SD 1.x runs through every dialect's own tests (tests/api/test_runpod.py and the others)."""
FAST = {"width": 128, "height": 128, "num_inference_steps": 3}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, family_models: FamilyModels
) -> Iterator[ServerProcess]:
    """One server with a model of every family (named after it) and a LoRA for each."""
    loras = tmp_path_factory.mktemp("loras")
    args: list[str] = []
    for family in FAMILIES:
        model = family_models(family)
        save_family_lora(family, model, loras, f"ink-{family}")
        args += ["--model", f"{family}={model}"]
    env = {"SDSERVE_LORA_DIR": str(loras), "SDSERVE_MODELSLAB_WAIT_S": "0"}
    with running_server(tmp_path_factory.mktemp("data"), args, env) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=180) as c:
        yield c


def runsync(client: httpx.Client, family: str, **fields: object) -> dict[str, Any]:
    body = {"input": {"prompt": "a lighthouse at dusk", **FAST, **fields}}
    r = client.post(f"/v2/{family}/runsync", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer["status"] == "COMPLETED", answer
    return answer


def images(client: httpx.Client, answer: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    return [decode_png(client.get(out["image"]).content) for out in answer["output"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_image_reproduces_alone_and_carries_its_parameters(
    client: httpx.Client, family: str
) -> None:
    answer = runsync(client, family, num_outputs=2, seed=11)

    first, second = images(client, answer)
    assert first.shape == (128, 128, 3)
    [alone] = images(client, runsync(client, family, seed=12))
    assert_batched_matches_alone(second, alone)
    png = client.get(answer["output"][0]["image"]).content
    info = ParserManager().parse(Image.open(io.BytesIO(png)))
    assert info is not None
    [sampler] = info.samplers
    assert sampler.model is not None and sampler.model.name == family
    assert sampler.parameters["seed"] == "11" and sampler.parameters["steps"] == "3"


@pytest.mark.parametrize("family", FAMILIES)
def test_openai_and_runpod_give_the_same_pixels(client: httpx.Client, family: str) -> None:
    r = client.post(
        "/v1/images/generations",
        json={"prompt": "a lighthouse at dusk", "model": family, "size": "128x128",
              "response_format": "b64_json", "num_inference_steps": 3, "seed": 5},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    openai = decode_png(base64.b64decode(r.json()["data"][0]["b64_json"]))

    [runpod] = images(client, runsync(client, family, seed=5))

    assert np.array_equal(openai, runpod)


def _start() -> Image.Image:
    x = np.linspace(0, 255, 128)
    pixels = np.stack(
        [np.tile(x, (128, 1)), np.tile(x[:, None], (1, 128)), np.full((128, 128), 90)]
    )
    return Image.fromarray(pixels.transpose(1, 2, 0).astype(np.uint8))


@pytest.mark.parametrize("family", FAMILIES)
def test_inpainting_keeps_the_preserved_pixels(client: httpx.Client, family: str) -> None:
    start = _start()
    mask = Image.new("L", (128, 128), 255)  # RunPod's convention: white is kept
    mask.paste(0, (32, 32, 96, 96))

    answer = runsync(
        client, family, init_image=png_data_uri(start), mask=png_data_uri(mask),
        prompt_strength=1.0, num_inference_steps=4,
    )  # fmt: skip

    [out] = images(client, answer)
    keep = np.asarray(mask) == 255
    assert np.array_equal(out[keep], np.asarray(start)[keep])
    assert not np.array_equal(out[~keep], np.asarray(start)[~keep])


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_through_openai_edits(client: httpx.Client, family: str) -> None:
    buffer = io.BytesIO()
    _start().save(buffer, format="PNG")
    fields = {"prompt": "a lighthouse", "model": family, "size": "128x128",
              "response_format": "b64_json", "num_inference_steps": "4",
              "prompt_strength": "0.5"}  # fmt: skip

    r = client.post("/v1/images/edits", data=fields, files={"image": buffer.getvalue()})

    assert r.status_code == 200, r.text
    out = decode_png(base64.b64decode(r.json()["data"][0]["b64_json"]))
    assert out.shape == (128, 128, 3)
    assert np.abs(out.astype(float) - np.asarray(_start())).mean() < 100


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_serves_its_request_and_does_not_leak(client: httpx.Client, family: str) -> None:
    def deepinfra(**fields: object) -> np.ndarray[Any, Any]:
        body = {"prompt": "a lighthouse", "width": 128, "height": 128,
                "num_inference_steps": 3, "seed": 3, **fields}  # fmt: skip
        r = client.post(f"/v1/inference/{family}", json=body)
        assert r.status_code == 200, r.text
        uri: str = r.json()["images"][0]
        return decode_png(base64.b64decode(uri.partition(",")[2])).astype(float)

    before = deepinfra()
    with_lora = deepinfra(lora=f"ink-{family}")
    after = deepinfra()

    assert np.abs(with_lora - before).mean() > 1.0
    assert np.array_equal(after, before)


EXPECTED_DEFAULTS = {
    "sd2": (768, 50, 7.5, "EulerDiscreteScheduler"),
    "sdxl": (1024, 30, 5.0, "EulerDiscreteScheduler"),
    "sd3": (1024, 28, 7.0, "EulerDiscreteScheduler"),
    "flux-dev": (1024, 28, 3.5, "EulerDiscreteScheduler"),
    "flux-schnell": (1024, 4, 1.0, "EulerDiscreteScheduler"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_fields_left_out_get_the_models_defaults(client: httpx.Client, family: str) -> None:
    # ModelsLab answers at once (SDSERVE_MODELSLAB_WAIT_S=0) with the parameters it will use;
    # an A1111 sampler name this family cannot run falls back to its default, as ModelsLab does.
    r = client.post(
        "/api/v6/images/text2img",
        json={"model_id": family, "prompt": "a lighthouse", "scheduler": "LMSDiscreteScheduler"},
    )
    assert r.status_code == 200, r.text
    meta = r.json()["meta"]
    client.post(f"/v2/{family}/cancel/{meta['file_prefix']}")
    size, steps, guidance, scheduler = EXPECTED_DEFAULTS[family]
    if family in ("sd2", "sdxl"):
        scheduler = "LMSDiscreteScheduler"  # they run K-LMS: the name sent is honoured
    assert (meta["W"], meta["H"], meta["steps"], meta["guidance_scale"]) == (
        size, size, steps, guidance,
    )  # fmt: skip
    assert meta["scheduler"] == scheduler


@pytest.mark.parametrize("family", FAMILIES)
def test_models_and_health_describe_each_family(client: httpx.Client, family: str) -> None:
    model = client.get(f"/v1/models/{family}").json()
    health = client.get(f"/v2/{family}/health").json()

    size, steps, guidance, _ = EXPECTED_DEFAULTS[family]
    assert model["family"] == family
    assert (model["width"], model["num_inference_steps"], model["guidance_scale"]) == (
        size, steps, guidance,
    )  # fmt: skip
    assert model["size_step"] == (16 if family in ("sd3", "flux-dev", "flux-schnell") else 8)
    assert health["model"]["family"] == family and health["model"]["name"] == family


def test_an_unknown_modelslab_model_lists_each_models_family(client: httpx.Client) -> None:
    r = client.post("/api/v3/text2img", json={"model_id": "nope", "prompt": "x"})

    message = r.json()["message"]
    assert "sdxl (Stable Diffusion XL, 1024x1024, 30 steps, guidance 5.0)" in message
    assert "flux-schnell (FLUX.1 schnell, 1024x1024, 4 steps, guidance 1.0)" in message


@pytest.mark.parametrize(
    ("family", "fields", "field", "message"),
    [
        ("flux-dev", {"negative_prompt": "blurry"}, "input.negative_prompt",
         "model flux-dev (FLUX.1 dev) has no negative prompt"),
        ("flux-schnell", {"scheduler": "K-LMS"}, "input.scheduler",
         "model flux-schnell (FLUX.1 schnell) runs EULER-D only; K-LMS has no equivalent"),
        ("sd3", {"scheduler": "DPM-M"}, "input.scheduler", "runs EULER-D only"),
        ("sd3", {"width": 136}, "input.width", "must be a multiple of 16 between 128 and 2048"),
        ("flux-dev", {"height": 2064}, "input.height", "between 128 and 2048 for model flux-dev"),
        ("sdxl", {"width": 132}, "input.width", "must be a multiple of 8"),
    ],
)  # fmt: skip
def test_what_a_model_cannot_honour_is_a_400_naming_field_and_model(
    client: httpx.Client, family: str, fields: dict[str, object], field: str, message: str
) -> None:
    body = {"input": {"prompt": "a lighthouse", **FAST, **fields}}

    r = client.post(f"/v2/{family}/run", json=body)

    assert r.status_code == 400, r.text
    [error] = r.json()["errors"]
    assert error["field"] == field and message in error["message"]


@pytest.mark.parametrize("family", ["sd3", "flux-dev"])
def test_compel_on_a_t5_model_is_a_400(client: httpx.Client, family: str) -> None:
    r = client.post(
        f"/v1/inference/{family}", json={"prompt": "a (red)1.5 cat", "use_compel": True}
    )

    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == "use_compel"
    assert "compel cannot weight prompts of model" in r.json()["error"]


def test_openai_names_the_negative_prompt_a_flux_model_cannot_use(client: httpx.Client) -> None:
    r = client.post(
        "/v1/images/generations",
        json={"prompt": "a cat", "model": "flux-schnell", "negative_prompt": "dog"},
    )

    assert r.status_code == 400
    assert r.json()["error"]["param"] == "negative_prompt"


def test_compel_weights_sdxl_prompts(client: httpx.Client) -> None:
    def deepinfra(prompt: str, compel: bool) -> np.ndarray[Any, Any]:
        body = {"prompt": prompt, "width": 128, "height": 128, "num_inference_steps": 3,
                "seed": 9, "use_compel": compel}  # fmt: skip
        r = client.post("/v1/inference/sdxl", json=body)
        assert r.status_code == 200, r.text
        uri: str = r.json()["images"][0]
        return decode_png(base64.b64decode(uri.partition(",")[2])).astype(float)

    plain = deepinfra("a red lighthouse", compel=False)

    assert np.abs(deepinfra("a (red)2.0 lighthouse", compel=True) - plain).mean() > 1.0
    assert np.abs(deepinfra("a red lighthouse", compel=True) - plain).mean() < 0.5


def test_the_models_weights_stay_loaded_between_families(server: ServerProcess) -> None:
    # Six tiny models fit the default budget (the machine's memory): none is reloaded.
    assert "loaded LoRA ink-sdxl" in server.log()
    assert "unloading model" not in server.log()


def test_shared_mode_serves_the_families_with_the_same_pixels(
    client: httpx.Client,
    family_models: FamilyModels,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
) -> None:
    families: list[FamilyName] = ["sdxl", "flux-schnell"]
    args = [arg for f in families for arg in ("--model", f"{f}={family_models(f)}")]
    embedded = {f: images(client, runsync(client, f, seed=21))[0] for f in families}

    with fresh_database() as database:
        env = shared_env(database, s3_endpoint, "sdserve-families")
        data_dir = tmp_path_factory.mktemp("shared")
        with (
            running_server(data_dir, args, env) as shared,
            httpx.Client(base_url=shared.url, timeout=180) as other,
        ):
            for family in families:
                [image] = images(other, runsync(other, family, seed=21))
                assert np.array_equal(image, embedded[family]), family
