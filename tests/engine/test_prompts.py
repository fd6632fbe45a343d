"""Prompt weighting with compel: asked for per request, or for all by the server's setting."""

from __future__ import annotations

import numpy as np
import pyparsing
import pytest
from compel.prompt_parser import PromptParser

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.pipelines import PipelineSet
from sdserve.engine.prompts import memoize_parsing
from sdserve.jobs.requests import MAX_COMPEL_NESTING

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


READINGS = [
    "a (red)1.5 circle",
    "a red++ circle-- on blue",
    "((((a red circle))))1.2, (blue)0.5 background",
    '("a red circle", "a blue square").blend(0.7, 0.3)',
    '("a red circle", "a blue square").and()',
    "a (red, round)1.3 circle.attend(0.8)",
    "a \\(literal\\) parenthesis",
]


def test_memoized_parsing_reads_prompts_as_compel_does() -> None:
    # The engine turns on pyparsing's packrat memo (an exponential parse otherwise): it must
    # not change how compel reads any prompt.
    parser = PromptParser()
    pyparsing.ParserElement.disable_memoization()
    try:
        plain = [repr(parser.parse_conjunction(prompt)) for prompt in READINGS]
    finally:
        memoize_parsing()
    assert [repr(parser.parse_conjunction(prompt)) for prompt in READINGS] == plain
    assert "Fragment:'red'@1.5" in plain[0] and "Blend" in plain[3]


def test_a_prompt_nested_as_deep_as_the_api_allows_generates(pipes: PipelineSet) -> None:
    # Seven levels took compel's unmemoized parser 37 s, each level about 4x more; 48 overflow
    # its recursion (bench/compel_cost.py).
    depth = MAX_COMPEL_NESTING
    nested = "a " + "(" * depth + "red" + ")" * depth + " circle"
    _pixels(pipes, make_request(prompt=nested, use_compel=True))
