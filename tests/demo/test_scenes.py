"""The demo model's world and its scorer: captions, the tokenizer, and reading images back."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from sdserve.demo.architecture import write_tokenizer
from sdserve.demo.scenes import (
    CANVAS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    render,
    sample_scene,
    training_example,
    vocabulary,
)
from sdserve.demo.score import read


def test_the_scorer_reads_every_drawn_scene_exactly() -> None:
    rng = random.Random(1)
    for _ in range(300):
        scene = sample_scene(rng)
        reading = read(render(scene))
        assert (reading.background, reading.colour, reading.shape) == (
            scene.background, scene.colour, scene.shape,
        ), scene  # fmt: skip


def test_the_scorer_reads_upscaled_images_and_finds_no_shape_in_a_plain_one() -> None:
    scene = Scene("star", "yellow", "purple", "small", "bottom right")
    reading = read(render(scene).resize((512, 512), Image.Resampling.LANCZOS))
    assert (reading.background, reading.colour, reading.shape) == ("purple", "yellow", "star")
    plain = read(Image.new("RGB", (CANVAS, CANVAS), COLOURS["green"]))
    assert (plain.background, plain.colour, plain.shape) == ("green", None, None)


def test_the_world_has_what_the_issue_asks_for() -> None:
    assert set(SHAPES) >= {"circle", "square", "triangle", "star"}
    assert len(COLOURS) >= 8 and len(SIZES) >= 3 and "top left" in POSITIONS
    scene = Scene("star", "red", "blue", "small", "top left")
    assert scene.caption() == "a small red star on a blue background, top left"
    drawn = np.asarray(render(scene))
    ys, xs = np.nonzero((drawn == COLOURS["red"]).all(axis=-1))
    assert xs.mean() < CANVAS / 3 and ys.mean() < CANVAS / 3  # top left, really


def test_a_caption_without_a_position_is_drawn_in_the_centre() -> None:
    rng = random.Random(2)
    examples = [training_example(rng) for _ in range(2000)]
    for scene, caption in examples:
        named = [p for p in POSITIONS if caption.endswith(f", {p}")]
        if named:
            assert scene.position == named[0]
        elif caption.startswith(f"a {scene.colour} {scene.shape}"):
            assert scene.position == "center", caption
    assert sum(caption == "" for _, caption in examples) > 100  # for classifier-free guidance


def test_the_tokenizer_spells_each_caption_word_as_one_token(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word).input_ids) == 3, word  # start, the word, end
    # anything else still tokenizes, byte by byte, rather than failing
    assert len(tokenizer("a zebra in the fog").input_ids) > 6
