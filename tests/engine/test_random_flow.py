"""The tiny random SD3 and FLUX models the tests and benchmarks build, and their random LoRAs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from PIL import Image

from tests.models.random_flow import build_random_flux, build_random_sd3

from .helpers import SIZE, init_image, mean_difference, pixels, square_mask
from .loras_flow import save_random_flux_lora, save_random_sd3_lora

Builder = Callable[[Path, int], None]
_BUILDERS: dict[str, Builder] = {
    "sd3": build_random_sd3,
    "flux-dev": build_random_flux,
    "flux-schnell": lambda path, seed: build_random_flux(path, seed, guidance_distilled=False),
}
_FAMILIES = list(_BUILDERS)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny model, built once at seed 0."""
    root = tmp_path_factory.mktemp("flow-models")
    for family, build in _BUILDERS.items():
        build(root / family, 0)
    return {family: root / family for family in _BUILDERS}


@pytest.fixture(scope="module")
def pipes(models: dict[str, Path]) -> dict[str, Any]:
    """Each family's model loaded once, for the tests that do not change it."""
    return {family: _load(path) for family, path in models.items()}


def _load(model: Path) -> Any:
    pipe = AutoPipelineForText2Image.from_pretrained(str(model))  # type: ignore[no-untyped-call]
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(
    pipe: Any, steps: int = 2, seed: int = 1234, **inputs: object
) -> tuple[Image.Image, list[int]]:
    """One seeded 128x128 image, and the steps `callback_on_step_end` saw."""
    steps_seen: list[int] = []

    def watch(_pipe: object, step: int, _t: object, tensors: dict[str, Any]) -> dict[str, Any]:
        steps_seen.append(step)
        return tensors

    image = pipe(
        prompt="a lighthouse at dusk",
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        callback_on_step_end=watch,
        **inputs,
    ).images[0]
    return image, steps_seen


@pytest.mark.parametrize("family", _FAMILIES)
def test_every_mode_runs_and_reports_each_step(family: str, pipes: dict[str, Any]) -> None:
    pipe = pipes[family]
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    inpaint = AutoPipelineForInpainting.from_pipe(pipe)

    image, steps = _draw(pipe, steps=3)
    assert image.size == (SIZE, SIZE)
    assert steps == [0, 1, 2] and pipe.num_timesteps == 3

    # Strength 0.5 of 3 steps runs the last 2, as on SD.
    image, steps = _draw(img2img, steps=3, image=init_image(), strength=0.5)
    assert image.size == (SIZE, SIZE)
    assert steps == [0, 1] and img2img.num_timesteps == 2

    image, steps = _draw(inpaint, steps=3, image=init_image(), mask_image=square_mask(), strength=1)
    assert image.size == (SIZE, SIZE)
    assert steps == [0, 1, 2] and inpaint.num_timesteps == 3


@pytest.mark.parametrize("family", _FAMILIES)
def test_img2img_keeps_the_init_image_at_low_strength(family: str, pipes: dict[str, Any]) -> None:
    # A random VAE cannot reproduce any image: the init image as the model sees it is its VAE
    # round trip. A calibrated VAE adds no noise of its own, so little strength stays close to it.
    pipe = pipes[family]
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    with torch.no_grad():
        posterior = pipe.vae.encode(img2img.image_processor.preprocess(init_image())).latent_dist
        seen = img2img.image_processor.postprocess(pipe.vae.decode(posterior.mean).sample)[0]

    light, _ = _draw(img2img, steps=4, image=init_image(), strength=0.25)
    full, _ = _draw(img2img, steps=4, image=init_image(), strength=1.0)

    assert posterior.std.max() < 1e-3
    assert mean_difference(light, seen) < 0.5 * mean_difference(full, seen)


def test_inpainting_changes_the_masked_area_most(pipes: dict[str, Any]) -> None:
    inpaint = AutoPipelineForInpainting.from_pipe(pipes["flux-dev"])
    kept = pixels(square_mask()) == 0

    # diffusers does not paste the kept pixels back (sdserve does): outside the mask, seeds
    # differ only where the VAE decoder blurs across the mask's edge.
    one, _ = _draw(inpaint, image=init_image(), mask_image=square_mask(), strength=1, seed=1)
    other, _ = _draw(inpaint, image=init_image(), mask_image=square_mask(), strength=1, seed=2)

    change = np.abs(pixels(one) - pixels(other))
    assert change[~kept].mean() > 1.5 * change[kept].mean()


def test_dev_is_guidance_distilled_and_schnell_is_not(
    models: dict[str, Path], pipes: dict[str, Any]
) -> None:
    def config(family: str, part: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((models[family] / part).read_text())
        return loaded

    assert config("flux-dev", "transformer/config.json")["guidance_embeds"] is True
    assert config("flux-schnell", "transformer/config.json")["guidance_embeds"] is False
    assert config("flux-dev", "scheduler/scheduler_config.json")["use_dynamic_shifting"] is True
    assert config("flux-schnell", "scheduler/scheduler_config.json")["shift"] == 1.0

    dev = pipes["flux-dev"]
    assert mean_difference(_draw(dev, guidance_scale=1.0)[0], _draw(dev)[0]) > 0


@pytest.mark.parametrize(
    ("family", "save_lora"),
    [("sd3", save_random_sd3_lora), ("flux-dev", save_random_flux_lora)],
)
def test_a_random_lora_changes_the_image_and_unloads_cleanly(
    family: str,
    save_lora: Callable[[Path, Path, str], Path],
    models: dict[str, Path],
    tmp_path: Path,
) -> None:
    lora = save_lora(models[family], tmp_path, "ink")
    pipe = _load(models[family])  # its own: a failure here must not leave others a LoRA
    plain, _ = _draw(pipe)

    pipe.load_lora_weights(tmp_path, weight_name=lora.name)
    styled, _ = _draw(pipe)
    pipe.unload_lora_weights()
    again, _ = _draw(pipe)

    assert mean_difference(styled, plain) > 1
    assert np.array_equal(pixels(again), pixels(plain))
