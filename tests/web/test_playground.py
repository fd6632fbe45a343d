"""The web playground at `/`, in a real headless Chromium against a real server serving the demo
model: the page loads from the server alone, generates what the prompt says, inpaints a painted
mask, cancels, asks for and keeps the API key, and remembers its jobs across reloads."""

from __future__ import annotations

import base64
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, FilePayload, Locator, expect

from sdserve.api.playground import WEB_DIR
from sdserve.registry import DEMO_MODEL_DIR
from tests.engine.helpers import save_random_lora
from tests.helpers import (
    ServerProcess,
    assert_batched_matches_alone,
    decode_png,
    image_from_output,
    running_server,
)
from tests.web.browser import (
    JOB_TIMEOUT_MS,
    Playground,
    chromium,
    needs_chromium,
    new_context,
    screenshot,
)

pytestmark = needs_chromium

KEY = "playground-key"
LORA = "blocks"
SMALL = {"width": 128, "height": 128, "num_inference_steps": 10}
"""Small, quick jobs; the demo model draws at 64x64 whatever the size."""


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    loras = tmp_path_factory.mktemp("loras")
    save_random_lora(DEMO_MODEL_DIR, loras, LORA)
    env = {"SDSERVE_API_KEYS": KEY, "SDSERVE_LORA_DIR": str(loras), "SDSERVE_RATE_LIMIT": "none"}
    with running_server(tmp_path_factory.mktemp("data"), [], env) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def http(web_server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=web_server.url, headers=headers, timeout=120) as client:
        yield client


@pytest.fixture
def playground(web_server: ServerProcess, browser: Browser) -> Iterator[Playground]:
    """The page open in a fresh browser profile whose key was typed in before."""
    context = new_context(browser, api_key=KEY)
    page = Playground(context.new_page(), f"{web_server.url}/")
    page.open()
    yield page
    context.close()


def _job(http: httpx.Client, card: Locator) -> dict[str, Any]:
    """The card's job as the server reports it."""
    response = http.get(f"/v2/default/status/{card.get_attribute('data-job-id')}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _blue(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (p[..., 2] > 150) & (p[..., 0] < 110) & (p[..., 1] < 150)


def _red(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (p[..., 0] > 150) & (p[..., 1] < 110) & (p[..., 2] < 110)


def _border(p: np.ndarray[Any, Any], width: int = 8) -> np.ndarray[Any, Any]:
    return np.concatenate([p[:width].reshape(-1, 3), p[-width:].reshape(-1, 3),
                           p[:, :width].reshape(-1, 3), p[:, -width:].reshape(-1, 3)])  # fmt: skip


def test_the_page_and_its_files_come_from_the_server_without_a_key(
    web_server: ServerProcess,
) -> None:
    page = httpx.get(f"{web_server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    linked = re.findall(r'(?:src|href)="(playground/[^"]+)"', page.text)
    assert "playground/js/app.js" in linked and "playground/app.css" in linked
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    shipped = [p for p in WEB_DIR.rglob("*") if p.is_file()]
    assert len(shipped) >= 10
    for path in shipped:
        answer = httpx.get(f"{web_server.url}/playground/{path.relative_to(WEB_DIR).as_posix()}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(types[path.suffix])
        assert answer.content == path.read_bytes()
    missing = httpx.get(f"{web_server.url}/playground/js/nothing.js")
    assert missing.status_code == 404 and "nothing.js" in missing.json()["error"]
    # The API itself still wants the key, and the page is no API call.
    assert httpx.get(f"{web_server.url}/v1/models").status_code == 401
    paths = httpx.get(f"{web_server.url}/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/playground") for p in paths)


def test_the_form_offers_the_servers_models_with_their_defaults(
    playground: Playground, http: httpx.Client
) -> None:
    page = playground.page
    models = http.get("/v1/models").json()["data"]
    offered = page.locator("#model option").evaluate_all("(options) => options.map(o => o.value)")
    assert offered == [model["id"] for model in models]
    default = next(model for model in models if model["id"] == page.input_value("#model"))
    assert page.input_value("#width") == str(default["width"])
    assert page.input_value("#height") == str(default["height"])
    assert page.input_value("#num_inference_steps") == str(default["num_inference_steps"])
    assert float(page.input_value("#guidance_scale")) == default["guidance_scale"]
    assert page.input_value("#scheduler") == default["scheduler"]
    schedulers = page.locator("#scheduler option").evaluate_all("(os) => os.map(o => o.value)")
    assert schedulers == default["schedulers"]
    loras = page.locator("#lora option").evaluate_all("(options) => options.map(o => o.value)")
    assert loras == ["", LORA]


def test_generates_what_the_prompt_says(
    playground: Playground, http: httpx.Client, tmp_path: Path
) -> None:
    page = playground.page
    playground.fill(prompt="a red circle on a blue background", seed=7, num_outputs=2, **SMALL)
    card = playground.generate()
    job_id = card.get_attribute("data-job-id") or ""
    images = playground.wait_images(card, 2)
    for image, seed in zip(images, (7, 8), strict=True):
        pixels = playground.pixels(image)
        assert pixels.shape == (128, 128, 3)
        assert _blue(_border(pixels)).mean() > 0.8  # a blue background...
        red = _red(pixels)
        assert red.mean() > 0.05 and red[54:74, 54:74].mean() > 0.8  # ...and a red disc
        # Its seed and parameters, read from the PNG's own text chunk.
        assert playground.parameter(image, "Seed") == str(seed)
        assert playground.parameter(image, "Prompt") == "a red circle on a blue background"
        assert playground.parameter(image, "Steps") == "10"
        assert playground.parameter(image, "Size") == "128x128"
        download = image.locator(".download").get_attribute("download")
        assert download == f"sdserve-{job_id[:8]}-{seed}.png"
    # The page showed the server's images, as its API serves them.
    output = _job(http, card)["output"]
    for image, served in zip(images, output, strict=True):
        assert np.array_equal(playground.pixels(image), image_from_output(http, served["image"]))
    # Everything the page asked for came from the server itself: nothing from elsewhere.
    hosts = {urlsplit(url).netloc for url in playground.requests if not url.startswith("blob:")}
    assert hosts == {f"127.0.0.1:{urlsplit(playground.url).port}"}
    screenshot(page, tmp_path / "playground.png")
    assert Image.open(tmp_path / "playground.png").size == (1280, 900)

    # "Reuse seed" and the copied curl call make the second image again, alone.
    images[1].locator(".reuse-seed").click()
    assert page.input_value("#seed") == "8"
    command = images[1].locator(".curl-text").text_content() or ""
    again = _run_curl(command)
    assert_batched_matches_alone(playground.pixels(images[1]), again)


def _run_curl(command: str) -> np.ndarray[Any, Any]:
    """What the shown curl command answers, sent as curl would send it."""
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:4] == ["curl", "-s", "-X", "POST"]
    url, headers, body = words[4], {}, ""
    for flag, value in zip(words[5::2], words[6::2], strict=True):
        if flag == "-H":
            name, _, text = value.partition(": ")
            headers[name] = text
        else:
            assert flag == "-d"
            body = value
    assert urlsplit(url).path == "/v2/default/runsync"
    answer = httpx.post(url, headers=headers, content=body, timeout=120).json()
    assert answer["status"] == "COMPLETED", answer
    return image_from_output(httpx.Client(), answer["output"][0]["image"])


def test_inpaints_the_mask_painted_on_a_result(playground: Playground, http: httpx.Client) -> None:
    page = playground.page
    playground.fill(prompt="a red circle on a blue background", seed=5, **SMALL)
    [original] = playground.wait_images(playground.generate(), 1)
    before = playground.pixels(original)
    original.locator(".use-input").click()
    expect(page.locator("#init-editor")).to_be_visible()
    playground.paint(0.3, 0.3, 0.7, 0.7)
    playground.fill(prompt="a yellow square on a blue background")
    playground.set_range("prompt_strength", 1)
    card = playground.generate()
    [inpainted] = playground.wait_images(card, 1)
    after = playground.pixels(inpainted)
    change = np.abs(after.astype(int) - before.astype(int)).sum(axis=2)
    assert change[48:80, 48:80].mean() > 60  # the painted middle is drawn anew...
    outside = np.ones(change.shape, dtype=bool)
    outside[20:108, 20:108] = False
    assert change[outside].max() <= 3  # ...and what lay outside the mask is kept
    assert playground.parameter(inpainted, "Denoising strength") == "1.0"
    # The mask went out in RunPod's convention: black is repainted, white is kept.
    sent = _job(http, card)["input"]
    mask = decode_png(base64.b64decode(sent["mask"].partition(",")[2]))
    assert mask.shape == (128, 128, 3)
    assert (mask[52:76, 52:76] == 0).all() and (mask[:16] == 255).all()


def _scene_png() -> bytes:
    image = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(image).rectangle((32, 32, 96, 96), fill=(30, 170, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_to_image_from_a_chosen_or_dropped_file(
    playground: Playground, http: httpx.Client
) -> None:
    page = playground.page
    scene = _scene_png()
    chosen: FilePayload = {"name": "scene.png", "mimeType": "image/png", "buffer": scene}
    page.set_input_files("#init-file", files=[chosen])
    expect(page.locator("#init-editor")).to_be_visible()
    assert page.locator("#init-preview").evaluate("(img) => img.naturalWidth") == 128
    page.click("#remove-init")
    expect(page.locator("#drop-zone")).to_be_visible()
    page.locator("#drop-zone").evaluate(
        """(zone, encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], "scene.png", {type: "image/png"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
        }""",
        base64.b64encode(scene).decode(),
    )
    expect(page.locator("#init-editor")).to_be_visible()
    playground.fill(prompt="a green square on a white background", seed=2, **SMALL)
    playground.set_range("prompt_strength", 0.4)
    card = playground.generate()
    [image] = playground.wait_images(card, 1)
    pixels = playground.pixels(image).astype(int)
    assert _border(pixels).mean() > 200  # the white around the square is kept...
    middle = pixels[48:80, 48:80].reshape(-1, 3).mean(axis=0)
    assert middle[1] > middle[0] + 50 and middle[1] > middle[2] + 50  # ...and the green square
    assert playground.parameter(image, "Denoising strength") == "0.4"
    sent = _job(http, card)["input"]
    assert sent["init_image"].startswith("data:image/png;base64,") and "mask" not in sent


def test_a_lora_and_its_scale_reach_the_image(playground: Playground, http: httpx.Client) -> None:
    playground.page.select_option("#lora", LORA)
    # Beyond Latin-1, so the server writes the parameters as an iTXt chunk (UTF-8).
    prompt = "a blue square ★ über"
    playground.fill(prompt=prompt, lora_scale=0.5, **SMALL)
    card = playground.generate()
    [image] = playground.wait_images(card, 1)
    assert playground.parameter(image, "Prompt") == f"{prompt} <lora:{LORA}:0.5>"
    sent = _job(http, card)["input"]
    assert (sent["lora"], sent["lora_scale"]) == (LORA, 0.5)


def test_a_refused_field_is_named_on_the_form(playground: Playground) -> None:
    page = playground.page
    playground.fill(prompt="a red circle", width=100)
    page.click("#generate")
    expect(page.locator("#form-error")).to_contain_text("input.width")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#width ~ .error")).to_contain_text("multiple of 8")
    assert playground.jobs.count() == 0


def test_cancel_stops_a_running_job_shown_forming(
    playground: Playground, http: httpx.Client
) -> None:
    playground.fill(prompt="a blue square", width=128, height=128, num_inference_steps=500)
    card = playground.generate()
    expect(card.locator(".progress-text")).to_contain_text("/500 steps", timeout=JOB_TIMEOUT_MS)
    assert float(card.locator("progress").get_attribute("value") or 0) >= 1
    # Its preview, from the job's event stream: a JPEG the browser decoded, shown enlarged.
    preview = card.locator(".preview")
    expect(preview).to_be_visible(timeout=JOB_TIMEOUT_MS)
    assert (preview.get_attribute("src") or "").startswith("data:image/jpeg;base64,")
    assert preview.evaluate("img => img.complete && img.naturalWidth") == 128 // 8
    card.locator(".cancel").click()
    playground.wait_status(card, "CANCELLED")
    expect(card.locator(".status")).to_have_text("cancelled")
    expect(card.locator(".cancel")).to_be_hidden()
    assert _job(http, card)["status"] == "CANCELLED"


def test_the_page_asks_for_the_key_and_keeps_it(
    web_server: ServerProcess, browser: Browser
) -> None:
    context = new_context(browser)
    playground = Playground(context.new_page(), f"{web_server.url}/")
    page = playground.page
    page.goto(playground.url)
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#key-message")).to_have_text("this server needs an API key")
    assert page.locator("#model option").count() == 0
    page.fill("#api-key", "not-the-key")
    page.click("#key-form button")
    expect(page.locator("#key-message")).to_contain_text("refused")
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    playground.wait_for_models()
    expect(page.locator("#key-message")).to_have_text("")
    page.reload()
    playground.wait_for_models()
    assert page.input_value("#api-key") == KEY
    expect(page.locator("#key-message")).to_have_text("")
    context.close()


def test_recent_jobs_come_back_after_a_reload(playground: Playground) -> None:
    page = playground.page
    playground.fill(prompt="a green star on a white background", seed=1, **SMALL)
    first = playground.generate()
    first_id = first.get_attribute("data-job-id") or ""
    playground.wait_images(first, 1)
    playground.fill(prompt="a yellow circle on a black background")
    second = playground.generate()
    second_id = second.get_attribute("data-job-id") or ""
    playground.wait_images(second, 1)
    playground.fill(prompt="a purple square", num_inference_steps=500)
    running = playground.generate()
    running_id = running.get_attribute("data-job-id") or ""

    page.reload()
    playground.wait_for_models()
    ids = playground.jobs.evaluate_all("(cards) => cards.map(card => card.dataset.jobId)")
    assert ids == [running_id, second_id, first_id]  # newest first
    for job_id, prompt in [(first_id, "a green star"), (second_id, "a yellow circle")]:
        [image] = playground.wait_images(playground.job(job_id), 1)
        assert playground.parameter(image, "Prompt").startswith(prompt)
    # The form is fresh after the reload; a job's settings can be taken back into it.
    playground.job(second_id).locator(".reuse").click()
    assert page.input_value("#prompt") == "a yellow circle on a black background"
    assert page.input_value("#num_inference_steps") == str(SMALL["num_inference_steps"])
    assert page.input_value("#seed") == "1"
    # A job still running is followed again, and can be cancelled.
    running = playground.job(running_id)
    expect(running.locator(".progress-text")).to_contain_text("/500", timeout=JOB_TIMEOUT_MS)
    running.locator(".cancel").click()
    playground.wait_status(running, "CANCELLED")

    playground.job(first_id).locator(".dismiss").click()
    page.reload()
    playground.wait_for_models()
    playground.wait_status(playground.job(running_id), "CANCELLED")
    ids = playground.jobs.evaluate_all("(cards) => cards.map(card => card.dataset.jobId)")
    assert ids == [running_id, second_id]
