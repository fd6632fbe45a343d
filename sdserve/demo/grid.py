"""Draw a grid of the demo model's images through a running server's RunPod API:
`python -m sdserve.demo.grid --url http://127.0.0.1:8000 --out docs/demo-grid.png`.

Each cell is one `/runsync` answer, fetched through the link the server gives, so the grid
shows exactly what a client of the served API gets.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Annotated

import httpx
import typer
from PIL import Image, ImageDraw

PROMPTS = (
    "a red circle on a blue background",
    "a small yellow star on a purple background, top left",
    "a large green triangle on a white background",
    "a pink square on a black background, bottom right",
    "a small orange circle on a green background, right",
    "a large blue star on a yellow background",
    "a white triangle on a red background, top",
    "a brown square on a pink background, bottom left",
)
CELL = 128
_LABEL_HEIGHT = 28


def draw(client: httpx.Client, prompt: str, seed: int, size: int = CELL) -> Image.Image:
    """One image, as the served API answers it."""
    body = {"input": {"prompt": prompt, "width": size, "height": size, "seed": seed}}
    r = client.post("/v2/default/runsync", json=body)
    r.raise_for_status()
    answer = r.json()
    if answer.get("status") != "COMPLETED":
        raise RuntimeError(f"{prompt!r}: {answer}")
    link = answer["output"][0]["image"]
    data = client.get(link).content if link.startswith("http") else base64.b64decode(link)
    return Image.open(io.BytesIO(data)).convert("RGB")


def grid(client: httpx.Client, prompts: tuple[str, ...], seeds: int) -> Image.Image:
    """A row per prompt (its text underneath the images), a column per seed (0, 1, ...)."""
    sheet = Image.new("RGB", (CELL * seeds, (CELL + _LABEL_HEIGHT) * len(prompts)), "white")
    pen = ImageDraw.Draw(sheet)
    for row, prompt in enumerate(prompts):
        top = row * (CELL + _LABEL_HEIGHT)
        for seed in range(seeds):
            sheet.paste(draw(client, prompt, seed), (seed * CELL, top))
        pen.text((4, top + CELL + 8), prompt, fill="black")
    return sheet


def main(
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("demo-grid.png"),
    seeds: Annotated[int, typer.Option(help="Images per prompt.")] = 4,
    api_key: Annotated[str | None, typer.Option(help="If the server needs one.")] = None,
) -> None:
    """Write a grid of the demo model's images for a few prompts."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        grid(client, PROMPTS, seeds).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
