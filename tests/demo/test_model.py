"""The shipped demo model: in the package, within budget, and an SD model like any other
(every scheduler, every mode, any size), which draws what its prompt says."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdserve.canonical import SCHEDULER_NAMES, GenerationRequest
from sdserve.demo.evaluate import fresh_scenes, score
from sdserve.engine.generate import generate, generate_batch, working_size
from sdserve.engine.pipelines import PipelineSet, load_pipelines
from sdserve.registry import DEFAULT_MODEL, DEMO_GUIDANCE, DEMO_MODEL_DIR, load_registry
from tests.engine.helpers import ignore_steps, init_image, make_request, pixels, square_mask
from tests.helpers import assert_batched_matches_alone

MODES = ("txt2img", "img2img", "inpaint")


@pytest.fixture(scope="module")
def demo() -> PipelineSet:
    spec = load_registry(None, []).resolve(DEFAULT_MODEL)
    assert spec is not None and spec.source == str(DEMO_MODEL_DIR)
    return load_pipelines(spec, "cpu")


def test_it_is_a_diffusers_sd_model_within_40_mb() -> None:
    index = json.loads((DEMO_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    size = sum(f.stat().st_size for f in DEMO_MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 40 * 2**20


def _request(mode: str, width: int, height: int, **overrides: object) -> GenerationRequest:
    if mode != "txt2img":
        overrides.setdefault("init_image", init_image(width, height))
    if mode == "inpaint":
        overrides.setdefault("mask", square_mask(width, height))
    return make_request(
        model=DEFAULT_MODEL, prompt="a large green star on a white background",
        width=width, height=height, **overrides,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("scheduler", "mode"),
    [(s, m) for s in SCHEDULER_NAMES for m in MODES if s != "IPNDM" or m == "txt2img"],
)
def test_every_scheduler_and_mode_at_any_size(demo: PipelineSet, scheduler: str, mode: str) -> None:
    request = _request(mode, 192, 128, scheduler=scheduler)
    [result] = generate(demo, request, ignore_steps)
    assert result.image.size == (192, 128)  # drawn at 96x64, upscaled
    assert pixels(result.image).std() > 1.0


def test_it_draws_at_64_pixels_and_the_requested_aspect_ratio(demo: PipelineSet) -> None:
    assert working_size(demo, 128, 128) == (64, 64)
    assert working_size(demo, 512, 512) == (64, 64)
    assert working_size(demo, 192, 128) == (96, 64)
    assert working_size(demo, 128, 768) == (64, 384)
    assert working_size(demo, 200, 136) == (96, 64)  # sides the latents can halve cleanly


def test_inpainting_keeps_the_preserved_pixels_at_full_size(demo: PipelineSet) -> None:
    request = _request("inpaint", 256, 256)
    [result] = generate(demo, request, ignore_steps)
    kept = np.asarray(square_mask(256, 256)) == 0
    assert (pixels(result.image)[kept] == pixels(init_image(256, 256))[kept]).all()


def test_it_draws_what_the_prompt_says(demo: PipelineSet) -> None:
    # A sample of the evaluation (python -m sdserve.demo.evaluate scores 200 such scenes).
    scenes = fresh_scenes(12)
    guided = score(demo, scenes, guidance=DEMO_GUIDANCE, steps=20, size=128)
    assert guided.background >= 11 / 12 and guided.colour >= 11 / 12
    # What clients of the hosted APIs send: the model's guidance cutoff keeps it on the prompt.
    usual = score(demo, scenes, guidance=7.5, steps=20, size=128)
    assert usual.background >= 11 / 12 and usual.colour >= 11 / 12
    uncut = replace(demo, spec=demo.spec.model_copy(update={"guidance_cutoff": None}))
    overdone = score(uncut, scenes, guidance=7.5, steps=20, size=128)
    assert overdone.colour < usual.colour  # guidance to the last step breaks the colours


def test_the_same_seed_draws_the_same_image(demo: PipelineSet) -> None:
    request = _request("txt2img", 128, 128, seed=99)
    [first] = generate(demo, request, ignore_steps)
    [again] = generate(demo, request, ignore_steps)
    assert isinstance(first.image, Image.Image)
    assert (pixels(first.image) == pixels(again.image)).all()


@pytest.mark.parametrize("mode", MODES)
def test_several_images_of_a_request_pass_the_guidance_cutoff(demo: PipelineSet, mode: str) -> None:
    # The demo model stops guiding after 40% of the steps; a batch keeps each image's prompt.
    request = _request(mode, 128, 128, seed=40, num_outputs=2, num_inference_steps=5)
    made = generate(demo, request, ignore_steps)
    assert [result.seed for result in made] == [40, 41]
    for result in made:
        [alone] = generate(
            demo, request.model_copy(update={"seed": result.seed, "num_outputs": 1}), ignore_steps
        )
        assert_batched_matches_alone(pixels(result.image), pixels(alone.image))


def test_requests_batched_together_pass_the_guidance_cutoff(demo: PipelineSet) -> None:
    first = _request("txt2img", 128, 128, seed=7, num_inference_steps=5)
    second = first.model_copy(update={"prompt": "a red circle on a blue background", "seed": 8})
    made = generate_batch(demo, [first, second], ignore_steps)
    for request, [result] in zip([first, second], made, strict=True):
        [alone] = generate(demo, request, ignore_steps)
        assert_batched_matches_alone(pixels(result.image), pixels(alone.image))
