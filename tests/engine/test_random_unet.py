"""The tiny SD 2.x and SDXL models the tests and benchmarks build, as folders and single files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.auto_pipeline import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from PIL import Image
from safetensors.torch import load_file

from tests.models.random_unet import build_random_sd2, build_random_sdxl

from .helpers import SIZE, init_image, mean_difference, pixels, save_random_lora, square_mask
from .ldm_checkpoint import save_sd2_checkpoint, save_sdxl_checkpoint
from .loras_unet import save_random_sdxl_lora

BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "sd2": build_random_sd2,
    "sdxl": build_random_sdxl,
}
FAMILIES = list(BUILDERS)
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    for family, build in BUILDERS.items():
        build(root / family, 0)
    return {family: root / family for family in BUILDERS}


@pytest.fixture(scope="module")
def pipes(models: dict[str, Path]) -> dict[str, Any]:
    return {family: _load(path) for family, path in models.items()}


def _load(path: Path) -> Any:
    # diffusers' pipelines are callables its type hints do not describe.
    pipe = AutoPipelineForText2Image.from_pretrained(str(path))  # type: ignore[no-untyped-call]
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


class _StepRecorder:
    """A `callback_on_step_end` that notes each step's index."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def __call__(
        self, pipe: DiffusionPipeline, step: int, timestep: int, kwargs: dict[str, object]
    ) -> dict[str, object]:
        self.steps.append(step)
        return kwargs


def _txt2img(pipe: Any, steps: int = 3) -> Image.Image:
    image: Image.Image = pipe(
        PROMPT, height=SIZE, width=SIZE, num_inference_steps=steps, generator=_seeded()
    ).images[0]
    return image


def test_sd2_loads_as_a_768_v_model(pipes: dict[str, Any]) -> None:
    pipe = pipes["sd2"]

    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 768
    assert pipe.unet.config.use_linear_projection
    assert pipe.text_encoder.config.hidden_act == "gelu"
    assert pipe.safety_checker is None


def test_sdxl_loads_as_an_sdxl_base_model(pipes: dict[str, Any]) -> None:
    pipe = pipes["sdxl"]

    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.default_sample_size * pipe.vae_scale_factor == 1024
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.config["force_zeros_for_empty_prompt"]
    assert pipe.vae.config.force_upcast
    assert pipe.tokenizer_2.pad_token == "!"
    unet = pipe.unet.config
    widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
    assert unet.cross_attention_dim == sum(widths)
    assert unet.addition_embed_type == "text_time"
    projection = pipe.text_encoder_2.config.projection_dim
    assert unet.projection_class_embeddings_input_dim == projection + 6 * (
        unet.addition_time_embed_dim
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_calls_back_at_every_step(family: str, pipes: dict[str, Any]) -> None:
    on_step = _StepRecorder()
    image = pipes[family](
        PROMPT, height=SIZE, width=SIZE, num_inference_steps=3, callback_on_step_end=on_step
    ).images[0]

    assert on_step.steps == [0, 1, 2]
    assert image.size == (SIZE, SIZE)
    assert pixels(image).std() > 1  # noise, not a blank


def _latents(pipe: DiffusionPipeline, image: Image.Image) -> torch.Tensor:
    """The image as the pipeline's latents, scaled as the UNet sees them."""
    with torch.no_grad():
        encoded = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mean
    latents: torch.Tensor = encoded * pipe.vae.config.scaling_factor
    return latents


def _round_trip(pipe: DiffusionPipeline, image: Image.Image) -> Image.Image:
    """The image as the tiny model's random VAE gives it back, before any denoising."""
    scaled = _latents(pipe, image) / pipe.vae.config.scaling_factor
    with torch.no_grad():
        decoded = pipe.vae.decode(scaled).sample
    result: Image.Image = pipe.image_processor.postprocess(decoded)[0]
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_departs_further_from_the_init_image_as_strength_grows(
    family: str, pipes: dict[str, Any]
) -> None:
    img2img = AutoPipelineForImage2Image.from_pipe(pipes[family])  # type: ignore[no-untyped-call]
    # A random VAE cannot reproduce any image, so the init image as the model sees it is its
    # VAE round trip; the further denoising goes, the further the output strays from it.
    seen = _round_trip(img2img, init_image())

    def distance(strength: float) -> float:
        image = img2img(
            PROMPT, image=init_image(), strength=strength, num_inference_steps=10
        ).images[0]
        assert image.size == (SIZE, SIZE)
        return mean_difference(image, seen)

    assert 1.5 * distance(0.2) < distance(1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_inpainting_repaints_only_the_masked_square(family: str, pipes: dict[str, Any]) -> None:
    inpaint = AutoPipelineForInpainting.from_pipe(pipes[family])  # type: ignore[no-untyped-call]
    on_step = _StepRecorder()
    latents = inpaint(
        PROMPT,
        image=init_image(),
        mask_image=square_mask(),
        height=SIZE,
        width=SIZE,
        strength=1.0,
        num_inference_steps=3,
        output_type="latent",
        callback_on_step_end=on_step,
    ).images

    # With a 4-channel UNet diffusers blends the init image's latents back in outside the mask
    # at every step. Compared as latents: the random VAE decoder mixes the whole image into
    # every pixel, so kept pixels shift even where their latents do not.
    expected = _latents(inpaint, init_image())
    factor = inpaint.vae_scale_factor
    kept = torch.from_numpy(pixels(square_mask())[::factor, ::factor] == 0)
    assert on_step.steps == [0, 1, 2]
    assert torch.allclose(latents[..., kept], expected[..., kept], atol=1e-3)
    assert (latents - expected)[..., ~kept].abs().mean() > 0.1


@pytest.mark.parametrize(
    ("family", "save", "pipeline_class", "marker"),
    [
        (
            "sd2",
            save_sd2_checkpoint,
            StableDiffusionPipeline,
            "cond_stage_model.model.token_embedding.weight",
        ),
        (
            "sdxl",
            save_sdxl_checkpoint,
            StableDiffusionXLPipeline,
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
        ),
    ],
)
def test_the_single_file_checkpoint_loads_back_the_same_weights(
    family: str,
    save: Callable[[DiffusionPipeline, Path], None],
    pipeline_class: type[StableDiffusionPipeline | StableDiffusionXLPipeline],
    marker: str,
    models: dict[str, Path],
    pipes: dict[str, Any],
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / f"{family}.safetensors"
    save(pipes[family], checkpoint)

    loaded = pipeline_class.from_single_file(str(checkpoint), config=str(models[family]))

    assert marker in load_file(checkpoint)  # a key diffusers tells the family by
    # diffusers loads single files non-strictly: a key it misses would stay random, silently.
    modules = {k: v for k, v in pipes[family].components.items() if isinstance(v, torch.nn.Module)}
    assert len(modules) == (4 if family == "sdxl" else 3)
    for part, module in modules.items():
        ours, theirs = module.state_dict(), getattr(loaded, part).state_dict()
        assert ours.keys() == theirs.keys(), part
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]), f"{part}.{key}"


@pytest.mark.parametrize(
    ("family", "save_lora"), [("sd2", save_random_lora), ("sdxl", save_random_sdxl_lora)]
)
def test_a_lora_changes_the_image_and_unloads_cleanly(
    family: str,
    save_lora: Callable[[Path, Path, str], Path],
    models: dict[str, Path],
    tmp_path: Path,
) -> None:
    lora = save_lora(models[family], tmp_path, "ink")
    pipe = _load(models[family])  # its own copy: loading a LoRA changes the pipeline
    before = _txt2img(pipe)

    pipe.load_lora_weights(str(tmp_path), weight_name=lora.name, adapter_name="ink")
    adapted = pipe.get_list_adapters()
    with_lora = _txt2img(pipe)
    pipe.unload_lora_weights()

    encoders = ["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"]
    assert adapted == {part: ["ink"] for part in ["unet", *encoders]}
    assert mean_difference(with_lora, before) > 5
    assert np.array_equal(pixels(_txt2img(pipe)), pixels(before))
    assert not pipe.get_list_adapters()
