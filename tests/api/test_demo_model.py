"""A first start: `sdserve serve` with no model configured serves the shipped demo model, which
draws what the prompt says, through the API."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from sdserve.demo.grid import CELL, PROMPTS, draw, grid
from sdserve.registry import DEMO_GUIDANCE
from tests.conftest import API_KEY
from tests.helpers import ServerProcess, running_server, wait_for


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"SDSERVE_API_KEYS": API_KEY}
    with running_server(tmp_path_factory.mktemp("data"), [], env) as server:
        yield server


@pytest.fixture(scope="module")
def demo_client(demo_server: ServerProcess) -> httpx.Client:
    return _client(demo_server)


def _client(server: ServerProcess) -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=120)


def _blue(p: np.ndarray) -> np.ndarray:
    return (p[..., 2] > 150) & (p[..., 0] < 110) & (p[..., 1] < 150)


def _red(p: np.ndarray) -> np.ndarray:
    return (p[..., 0] > 150) & (p[..., 1] < 110) & (p[..., 2] < 110)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_red_circle_on_a_blue_background(demo_client: httpx.Client, seed: int) -> None:
    image = draw(demo_client, "a red circle on a blue background", seed, size=256)
    assert image.size == (256, 256)
    p = np.asarray(image, dtype=np.int32)
    border = np.concatenate([p[:8].reshape(-1, 3), p[-8:].reshape(-1, 3),
                             p[:, :8].reshape(-1, 3), p[:, -8:].reshape(-1, 3)])  # fmt: skip
    assert _blue(border).mean() > 0.8  # a mostly blue border
    red = _red(p)
    assert red.mean() > 0.05  # a red shape of some size...
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() - 128) < 40 and abs(ys.mean() - 128) < 40  # ...whose mass is central
    assert red[108:148, 108:148].mean() > 0.8


def test_requests_without_guidance_get_the_demo_models_own(demo_client: httpx.Client) -> None:
    body = {"input": {"prompt": "a blue square", "width": 128, "height": 128, "seed": 5}}
    answer = demo_client.post("/v2/default/runsync", json=body).json()
    png = demo_client.get(answer["output"][0]["image"]).content
    parameters = Image.open(io.BytesIO(png)).info["parameters"]
    assert f"CFG scale: {DEMO_GUIDANCE}" in parameters
    body["input"]["guidance_scale"] = 7.5
    answer = demo_client.post("/v2/default/runsync", json=body).json()
    png = demo_client.get(answer["output"][0]["image"]).content
    assert "CFG scale: 7.5" in Image.open(io.BytesIO(png)).info["parameters"]


def test_the_readme_grid_comes_from_the_served_api(demo_client: httpx.Client) -> None:
    sheet = grid(demo_client, PROMPTS[:2], seeds=2)
    assert sheet.size[0] == 2 * CELL and sheet.size[1] > 2 * CELL
    assert np.asarray(sheet).std() > 10


def test_a_prompt_of_no_known_word_succeeds_but_says_so_in_every_dialect(
    demo_client: httpx.Client, demo_server: ServerProcess
) -> None:
    small = {"width": 128, "height": 128, "num_inference_steps": 4}
    fine = {"input": {"prompt": "a red circle on a blue background", **small}}
    assert "warnings" not in demo_client.post("/v2/default/runsync", json=fine).json()

    unknown = "a photo of a cat"
    queued = demo_client.post("/v2/default/run", json={"input": {"prompt": unknown, **small}})
    answers = {
        "runpod /run": queued.json(),
        "runpod /status": wait_for(
            demo_client, f"/v2/default/status/{queued.json()['id']}", {"COMPLETED", "FAILED"}
        ),
        "openai": demo_client.post(
            "/v1/images/generations",
            json={"prompt": unknown, "size": "128x128", "num_inference_steps": 4},
        ).json(),
        "deepinfra": demo_client.post(
            "/v1/inference/default", json={"prompt": unknown, **small}
        ).json(),
        "modelslab": demo_client.post(
            "/api/v6/images/text2img", json={"key": API_KEY, "prompt": unknown, **small}
        ).json()["meta"],
    }
    for dialect, answer in answers.items():
        (warning,) = answer["warnings"]
        assert "knows no word of this prompt" in warning and "circle" in warning, dialect
    assert answers["runpod /status"]["status"] == "COMPLETED"  # it still succeeds
    assert f"job {queued.json()['id']}: the demo model knows no word" in demo_server.log()
