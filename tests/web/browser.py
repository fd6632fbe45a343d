"""Drives the playground in the system's headless Chromium (Debian's `chromium`, through
Playwright's Python API; no browser is downloaded), as a person would use it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, sync_playwright

from tests.helpers import decode_png

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Nothing of the browser's own reaches out (updates, sync, field trials): every request the
tests record is the page's."""

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's `chromium` package)",
)

JOB_TIMEOUT_MS = 240_000
"""Longest wait for a job's state on the page (the suite's two busy cores run it)."""


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Browser, api_key: str | None = None) -> BrowserContext:
    """A fresh browser profile (empty localStorage), holding `api_key` as if typed in before."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    if api_key is not None:
        key = json.dumps(api_key)
        context.add_init_script(f"localStorage.getItem('sdserve.apiKey') ?? "
                                f"localStorage.setItem('sdserve.apiKey', {key})")  # fmt: skip
    return context


class Playground:
    """The playground page at `url`, and what a person does on it."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))

    def open(self) -> None:
        """Load the page and wait for the server's models in the form."""
        self.page.goto(self.url)
        self.wait_for_models()

    def wait_for_models(self) -> None:
        self.page.wait_for_function("document.querySelector('#model').options.length > 0")

    def fill(self, **fields: object) -> None:
        for name, value in fields.items():
            self.page.fill(f"#{name}", str(value))

    def set_range(self, name: str, value: float) -> None:
        self.page.locator(f"#{name}").evaluate(
            "(input, value) => { input.value = value;"
            " input.dispatchEvent(new Event('input', {bubbles: true})); }",
            value,
        )

    @property
    def jobs(self) -> Locator:
        return self.page.locator("#jobs .job")

    def generate(self) -> Locator:
        """Press Generate; the new job's card (the list's first)."""
        before = self.jobs.count()
        self.page.click("#generate")
        self.page.wait_for_function(
            f"document.querySelectorAll('#jobs .job').length > {before}"
            " || !document.querySelector('#form-error').hidden"
        )
        error = self.page.locator("#form-error")
        assert error.is_hidden(), error.text_content()
        return self.jobs.first

    def job(self, job_id: str) -> Locator:
        return self.page.locator(f'#jobs .job[data-job-id="{job_id}"]')

    def wait_status(self, card: Locator, status: str) -> None:
        card.and_(self.page.locator(f'[data-status="{status}"]')).wait_for(timeout=JOB_TIMEOUT_MS)

    def wait_images(self, card: Locator, count: int) -> list[Locator]:
        """A completed job's images, once each shows its parameters read from the PNG."""
        self.wait_status(card, "COMPLETED")
        images = card.locator(".image")
        images.nth(count - 1).locator('.params dd[data-param="Seed"]').wait_for()
        assert images.count() == count
        return [images.nth(i) for i in range(count)]

    def pixels(self, image: Locator) -> np.ndarray[Any, Any]:
        """The pixels of the image as the page shows it (its in-page PNG, decoded here)."""
        encoded = image.locator(".picture").evaluate(
            """async (img) => {
                const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
                let text = "";
                for (const byte of bytes) text += String.fromCharCode(byte);
                return btoa(text);
            }"""
        )
        return decode_png(base64.b64decode(encoded))

    def parameter(self, image: Locator, name: str) -> str:
        return image.locator(f'.params dd[data-param="{name}"]').inner_text()

    def paint(self, left: float, top: float, right: float, bottom: float) -> None:
        """Paint the mask over a rectangle of the input image (fractions of its sides), in
        strokes a brush apart, as a person fills an area."""
        box = self.page.locator("#mask-canvas").bounding_box()
        assert box is not None
        brush = float(self.page.locator("#brush-size").input_value())
        mouse = self.page.mouse
        y = box["y"] + top * box["height"]
        while y <= box["y"] + bottom * box["height"]:
            mouse.move(box["x"] + left * box["width"], y)
            mouse.down()
            mouse.move(box["x"] + right * box["width"], y, steps=8)
            mouse.up()
            y += brush / 2


def screenshot(page: Page, path: Path) -> None:
    """The playground as shown (its window: the form and the newest jobs)."""
    page.screenshot(path=str(path))
