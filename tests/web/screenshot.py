"""The README's picture of the playground, made by driving the page as the tests do:

    python -m tests.web.screenshot --url http://127.0.0.1:8000 --out docs/playground.png

against a running server (`--api-key` if it has keys)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.web.browser import Playground, chromium, new_context, screenshot

SCENES = [("a yellow star on a purple background", 11), ("a red circle on a blue background", 7)]
"""Prompts and seeds, the last one shown on top."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    parser.add_argument("--api-key")
    args = parser.parse_args()
    with chromium() as browser:
        context = new_context(browser, api_key=args.api_key)
        playground = Playground(context.new_page(), args.url.rstrip("/") + "/")
        playground.open()
        for prompt, seed in SCENES:
            playground.fill(prompt=prompt, seed=seed, num_outputs=3, width=256, height=256)
            images = playground.wait_images(playground.generate(), 3)
        # The last image as the input, with a mask painted over its middle, ready to inpaint.
        images[0].locator(".use-input").click()
        playground.page.locator("#init-editor").wait_for()
        playground.paint(0.35, 0.35, 0.65, 0.65)
        playground.fill(prompt="a white square on a blue background")
        playground.page.set_viewport_size({"width": 1280, "height": 1200})
        playground.page.evaluate("window.scrollTo(0, 0)")
        screenshot(playground.page, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
