"""The demo model's world: one coloured shape on a coloured background, and its captions.

Training draws scenes from here, the evaluation draws fresh ones, and the scorer knows the same
palette, so all three agree on what "a small red star on a blue background, top left" means.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from sdserve.registry import NATIVE_SIZE

CANVAS = NATIVE_SIZE
"""The side of a scene in pixels."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (250, 225, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 180),
    "pink": (250, 130, 200),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, float] = {"small": 0.18, "medium": 0.24, "large": 0.32}
"""Radius of the shape's circumscribing circle, as a fraction of the canvas."""
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "center": (0.5, 0.5),
    "right": (1.0, 0.5),
    "bottom left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom right": (1.0, 1.0),
}
"""Where the shape's centre lies within the room the canvas leaves it (0 = left/top)."""
MARGIN = 0.06
"""Every shape stays this far (a fraction of the canvas) from the edges."""
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: str
    jitter: tuple[float, float] = (0.0, 0.0)
    """A small offset of the centre, as a fraction of the canvas."""

    def caption(self) -> str:
        """The full caption: "a small red star on a blue background, top left"."""
        return (
            f"a {self.size} {self.colour} {self.shape} on a {self.background} background,"
            f" {self.position}"
        )


def sample_scene(rng: random.Random) -> Scene:
    colour, background = rng.sample(sorted(COLOURS), 2)
    return Scene(
        shape=rng.choice(SHAPES),
        colour=colour,
        background=background,
        size=rng.choice(sorted(SIZES)),
        position=rng.choice(sorted(POSITIONS)),
        jitter=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
    )


def training_example(rng: random.Random) -> tuple[Scene, str]:
    """A scene and a caption that may leave out what a user need not say (size, position,
    background; a shape with no position is drawn in the centre), so that short prompts work;
    sometimes only a fragment, so that negative prompts mean something; sometimes nothing, for
    classifier-free guidance."""
    scene = sample_scene(rng)
    centred = replace(scene, position="center")
    roll = rng.random()
    if roll < 0.1:
        return scene, ""
    if roll < 0.15:
        return centred, f"a {scene.colour} {scene.shape}"
    if roll < 0.2:
        return scene, f"a {scene.background} background"
    size = f"{scene.size} " if rng.random() < 0.7 else ""
    text = f"a {size}{scene.colour} {scene.shape}"
    if rng.random() < 0.9:
        text += f" on a {scene.background} background"
    if rng.random() < 0.7:
        return scene, f"{text}, {scene.position}"
    return centred, text


def drawing_words() -> list[str]:
    """The words that change what the demo model draws: colours, shapes, sizes, positions."""
    words: set[str] = set()
    for phrase in [*COLOURS, *SHAPES, *SIZES, *POSITIONS]:
        words.update(phrase.split())
    return sorted(words)


def prompt_warning(prompt: str) -> str | None:
    """Why the demo model will draw a smudge for `prompt`: it knows none of its words."""
    known = set(drawing_words())
    if any(word in known for word in re.findall(r"[a-z]+", prompt.lower())):
        return None
    return (
        "the demo model knows no word of this prompt, so the image follows none of it; it"
        " draws a coloured shape on a coloured background, e.g. 'a large red circle at the top"
        f" on a blue background' (its words: {', '.join(drawing_words())})"
    )


def vocabulary() -> list[str]:
    """Every word a caption uses, for the tokenizer."""
    words = {"a", "on", "background", ","}
    for phrase in [*COLOURS, *SHAPES, *SIZES, *POSITIONS]:
        words.update(phrase.split())
    return sorted(words)


def shape_outline(scene: Scene, scale: float = 1.0) -> list[tuple[float, float]] | None:
    """The shape's polygon in pixels (None for a circle), at `scale` times the canvas."""
    cx, cy, radius = _placement(scene, scale)
    if scene.shape == "square":
        half = radius * 0.8
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half),
                (cx - half, cy + half)]  # fmt: skip
    if scene.shape == "triangle":
        return _polygon(cx, cy + radius * 0.15, radius * 1.05, 3)
    if scene.shape == "star":
        outer = _polygon(cx, cy + radius * 0.05, radius * 1.05, 5)
        inner = _polygon(cx, cy + radius * 0.05, radius * 0.45, 5, turn=math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    return None


def render(scene: Scene) -> Image.Image:
    """The scene as a CANVAS x CANVAS RGB image, anti-aliased."""
    scale = float(_SUPERSAMPLE)
    image = Image.new("RGB", (CANVAS * _SUPERSAMPLE,) * 2, COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    outline = shape_outline(scene, scale)
    if outline is None:
        cx, cy, radius = _placement(scene, scale)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(outline, fill=fill)
    return image.reduce(_SUPERSAMPLE)


def _placement(scene: Scene, scale: float) -> tuple[float, float, float]:
    radius = SIZES[scene.size]
    fx, fy = POSITIONS[scene.position]
    low, high = MARGIN + radius, 1 - MARGIN - radius
    cx = low + fx * (high - low) + scene.jitter[0]
    cy = low + fy * (high - low) + scene.jitter[1]
    side = CANVAS * scale
    return cx * side, cy * side, radius * side


def _polygon(
    cx: float, cy: float, radius: float, corners: int, turn: float = 0.0
) -> list[tuple[float, float]]:
    """A regular polygon pointing up."""
    return [
        (
            cx + radius * math.sin(turn + 2 * math.pi * i / corners),
            cy - radius * math.cos(turn + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]
