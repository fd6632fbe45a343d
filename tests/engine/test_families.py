"""Every family the engine serves, on its tiny model: modes, seeds, progress, cancel, LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import EngineOptions, generate, generate_batch
from sdserve.engine.pipelines import PipelineSet, load_pipelines
from sdserve.families import FamilyName
from sdserve.registry import ModelSpec
from tests.conftest import FamilyModels

from .helpers import (
    Cancelled,
    ignore_steps,
    init_image,
    make_request,
    mean_difference,
    pixels,
    save_family_lora,
    square_mask,
)

FAMILIES: list[FamilyName] = list(get_args(FamilyName))
DEFAULT_SIZES = {"sd1": 512, "sd2": 768, "sdxl": 1024, "sd3": 1024}
"""The tiny models' configs give the real models' training sizes; FLUX's give none."""


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> FamilyName:
    name: FamilyName = request.param
    return name


@pytest.fixture(scope="module")
def model(family: FamilyName, family_models: FamilyModels) -> Path:
    return family_models(family)


@pytest.fixture(scope="module")
def pipes(family: FamilyName, model: Path) -> PipelineSet:
    return load_pipelines(ModelSpec(name=family, source=str(model)), "cpu")


def _request(pipes: PipelineSet, **fields: object) -> GenerationRequest:
    defaults: dict[str, object] = {
        "scheduler": pipes.spec.rules.scheduler,
        "num_inference_steps": 4,
    }
    return make_request(**(defaults | fields))


def _image(pipes: PipelineSet, request: GenerationRequest, **options: object) -> Image.Image:
    [result] = generate(pipes, request, ignore_steps, EngineOptions(nsfw_check=False, **options))  # type: ignore[arg-type]
    return result.image


def test_the_family_is_read_from_the_configs(family: FamilyName, pipes: PipelineSet) -> None:
    rules = pipes.spec.rules
    assert rules.family.name == family
    assert rules.size == DEFAULT_SIZES.get(family, 1024)
    assert type(pipes.txt2img).__name__ == {
        "sd1": "StableDiffusionPipeline",
        "sd2": "StableDiffusionPipeline",
        "sdxl": "StableDiffusionXLPipeline",
        "sd3": "StableDiffusion3Pipeline",
    }.get(family, "FluxPipeline")


def test_sd2_predicts_v_as_its_scheduler_config_says(pipes: PipelineSet) -> None:
    expected = "v_prediction" if pipes.family.name == "sd2" else "epsilon"
    assert pipes.scheduler_config.get("prediction_type", "epsilon") == expected


def test_each_image_of_a_request_reproduces_alone(pipes: PipelineSet) -> None:
    request = _request(pipes, num_outputs=2, seed=77)

    results = generate(pipes, request, ignore_steps, EngineOptions(nsfw_check=True))

    assert [r.seed for r in results] == [77, 78]
    assert all(r.image.size == (128, 128) and r.nsfw is False for r in results)
    alone = _image(pipes, _request(pipes, seed=78))
    # One batched call sums in another order: within one level of 255 (README).
    assert np.abs(pixels(results[1].image).astype(int) - pixels(alone).astype(int)).max() <= 1
    assert not np.array_equal(pixels(results[0].image), pixels(results[1].image))


def test_requests_batched_together_each_reproduce_alone(pipes: PipelineSet) -> None:
    # Dynamic batching: requests that share a batch_key run in one call, each with its own
    # prompts and seeds.
    requests = [
        _request(pipes, prompt="a lighthouse at dusk", seed=3, num_outputs=2),
        _request(pipes, prompt="a cat", negative_prompt="blurry", seed=50, num_outputs=2),
    ]
    steps: list[tuple[int, int]] = []

    batch = generate_batch(pipes, requests, lambda d, t: steps.append((d, t)), EngineOptions())

    assert [[r.seed for r in images] for images in batch] == [[3, 4], [50, 51]]
    assert steps[-1][0] == steps[-1][1] == len(steps)  # one call: one request's steps
    for request, images in zip(requests, batch, strict=True):
        for index, result in enumerate(images):
            alone = _image(
                pipes, request.model_copy(update={"seed": result.seed, "num_outputs": 1})
            )
            difference = np.abs(pixels(result.image).astype(int) - pixels(alone).astype(int))
            assert difference.max() <= 1, (index, difference.max())  # the README's one level
    assert mean_difference(batch[0][0].image, batch[1][0].image) > 1.0  # its own prompt


def test_progress_counts_every_step_of_every_image(pipes: PipelineSet) -> None:
    seen: list[tuple[int, int]] = []

    generate(pipes, _request(pipes, num_outputs=2), lambda d, t: seen.append((d, t)))

    assert seen == [(step, 4) for step in range(1, 5)]  # both images in one batched call


def test_previews_of_every_image_every_few_steps(pipes: PipelineSet) -> None:
    # Two requests in one call, then one request's images one call each: every image gets
    # its preview, at the latent grid's size, under its index in the batch.
    seen: list[tuple[int, int, int, list[Image.Image]]] = []
    options = EngineOptions(preview_every=2)
    requests = [
        _request(pipes, prompt="a lighthouse at dusk", seed=3, width=64, height=64),
        _request(pipes, prompt="a cat", seed=50, width=64, height=64),
    ]
    generate_batch(pipes, requests, ignore_steps, options, lambda *p: seen.append(p))
    grid = 64 // pipes.txt2img.vae_scale_factor
    assert [(done, total, first, len(images)) for done, total, first, images in seen] == [
        (2, 4, 0, 2),
        (4, 4, 0, 2),
    ]
    for *_, images in seen:
        assert all(image.size == (grid, grid) and image.mode == "RGB" for image in images)
    assert pixels(seen[0][3][0]).tolist() != pixels(seen[1][3][0]).tolist()  # it forms

    seen.clear()
    one_by_one = EngineOptions(preview_every=4, batch_images=False)
    request = _request(pipes, seed=7, num_outputs=2, width=64, height=64)
    generate(pipes, request, ignore_steps, one_by_one, lambda *p: seen.append(p))
    assert [(done, total, first, len(images)) for done, total, first, images in seen] == [
        (4, 8, 0, 1),
        (8, 8, 1, 1),
    ]


def test_a_cancel_stops_the_image_at_the_next_step(pipes: PipelineSet) -> None:
    steps: list[int] = []

    def cancel(done: int, total: int) -> None:
        steps.append(done)
        raise Cancelled

    with pytest.raises(Cancelled):
        generate(pipes, _request(pipes, num_inference_steps=20), cancel)
    assert steps == [1]


def test_inpainting_returns_the_kept_pixels_untouched(pipes: PipelineSet) -> None:
    start, mask = init_image(), square_mask()

    image = _image(pipes, _request(pipes, init_image=start, mask=mask, prompt_strength=1.0))

    kept = pixels(mask) == 0
    assert np.array_equal(pixels(image)[kept], pixels(start)[kept])
    assert not np.array_equal(pixels(image)[~kept], pixels(start)[~kept])


def test_img2img_departs_further_from_the_init_image_with_strength(pipes: PipelineSet) -> None:
    start = init_image()

    near = _image(pipes, _request(pipes, init_image=start, prompt_strength=0.3))
    far = _image(pipes, _request(pipes, init_image=start, prompt_strength=1.0))

    assert mean_difference(near, start) < mean_difference(far, start)


def test_a_lora_changes_its_request_only(
    family: FamilyName, pipes: PipelineSet, model: Path, tmp_path: Path
) -> None:
    save_family_lora(family, model, tmp_path, "ink")
    request = _request(pipes)
    before = _image(pipes, request)

    with_lora = _image(pipes, request.model_copy(update={"lora": "ink"}), loras_dir=tmp_path)
    after = _image(pipes, request)

    assert mean_difference(with_lora, before) > 1.0
    assert np.array_equal(pixels(after), pixels(before))


def test_compel_weights_the_prompt_where_the_family_allows(pipes: PipelineSet) -> None:
    if not pipes.family.compel:
        pytest.skip(f"{pipes.family.title}: compel is refused by the API (tests/api)")
    plain = _image(pipes, _request(pipes, prompt="a red lighthouse"))

    weighted = _image(pipes, _request(pipes, prompt="a (red)2.0 lighthouse", use_compel=True))
    unweighted = _image(pipes, _request(pipes, prompt="a red lighthouse", use_compel=True))

    assert mean_difference(weighted, plain) > 1.0
    assert mean_difference(unweighted, plain) < 0.5


def test_sdxl_in_half_precision_decodes_through_its_upcast_vae(
    family_models: FamilyModels,
) -> None:
    # SDXL's VAE overflows in float16; diffusers decodes in float32 when the VAE's config says
    # force_upcast, and sdserve keeps that config: the image is neither black nor NaN.
    spec = ModelSpec(name="half", source=str(family_models("sdxl")), dtype="float16")
    half = load_pipelines(spec, "cpu")
    assert half.txt2img.unet.dtype == torch.float16 and half.txt2img.vae.config.force_upcast

    image = _image(half, _request(half))

    assert not np.isnan(pixels(image)).any() and pixels(image).std() > 1.0
