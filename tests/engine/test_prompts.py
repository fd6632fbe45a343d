"""Prompt weighting with compel: asked for per request, or for all by the server's setting."""

from __future__ import annotations

import numpy as np
import pytest

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.pipelines import PipelineSet

from .helpers import ignore_steps, init_image, make_request, pixels, square_mask

WEIGHTED = "a (red)1.5 circle"
NO_CHECK = EngineOptions(nsfw_check=False)


def _pixels(
    pipes: PipelineSet, request: GenerationRequest, options: EngineOptions = NO_CHECK
) -> np.ndarray:
    [result] = generate(pipes, request, ignore_steps, options)
    return pixels(result.image)


def test_a_weighted_prompt_changes_the_image_and_reproduces(pipes: PipelineSet) -> None:
    plain = _pixels(pipes, make_request(prompt=WEIGHTED))
    weighted = _pixels(pipes, make_request(prompt=WEIGHTED, use_compel=True))
    again = _pixels(pipes, make_request(prompt=WEIGHTED, use_compel=True))

    # Without compel "(red)1.5" is literal text; with it, the weight of the word "red".
    assert not np.array_equal(weighted, plain)
    assert np.array_equal(weighted, again)


def test_the_weight_itself_matters(pipes: PipelineSet) -> None:
    up = _pixels(pipes, make_request(prompt="a (red)1.5 circle", use_compel=True))
    down = _pixels(pipes, make_request(prompt="a (red)0.5 circle", use_compel=True))

    assert not np.array_equal(up, down)


def test_a_plain_prompt_through_compel_is_the_plain_image(pipes: PipelineSet) -> None:
    request = make_request(prompt="a red circle", negative_prompt="blurry")

    through_compel = _pixels(pipes, request.model_copy(update={"use_compel": True}))

    assert np.array_equal(through_compel, _pixels(pipes, request))


def test_the_server_setting_weights_every_request(pipes: PipelineSet) -> None:
    everywhere = EngineOptions(compel_everywhere=True, nsfw_check=False)

    by_setting = _pixels(pipes, make_request(prompt=WEIGHTED), everywhere)

    assert np.array_equal(
        by_setting, _pixels(pipes, make_request(prompt=WEIGHTED, use_compel=True))
    )


def test_weighted_negative_prompts_and_long_prompts_work(pipes: PipelineSet) -> None:
    # The tiny tokenizer spends a token per character: this prompt is several 77-token chunks.
    long = "a lighthouse on a cliff, (stormy sea)1.2, dramatic clouds, " * 4
    request = make_request(prompt=long, negative_prompt="(blurry)1.4, low quality", use_compel=True)

    image = _pixels(pipes, request)

    assert image.std() > 1.0
    assert not np.array_equal(
        image, _pixels(pipes, request.model_copy(update={"use_compel": False}))
    )


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_weighting_works_from_an_init_image(pipes: PipelineSet, mode: str) -> None:
    images: dict[str, object] = {"init_image": init_image()}
    if mode == "inpaint":
        images["mask"] = square_mask()

    weighted = _pixels(pipes, make_request(prompt=WEIGHTED, use_compel=True, **images))

    assert not np.array_equal(weighted, _pixels(pipes, make_request(prompt=WEIGHTED, **images)))
