"""Requests and images for the engine tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from sdserve.canonical import GenerationRequest
from sdserve.families import FamilyName

SIZE = 128


class Cancelled(BaseException):
    """Like the worker's cancel: derives from BaseException so nobody swallows it."""


def ignore_steps(done: int, total: int) -> None:
    """An `on_step` for tests that do not watch progress."""


def make_request(**overrides: object) -> GenerationRequest:
    """A small, quick request; `init_image` and `mask` are given as PIL images."""
    fields: dict[str, object] = {
        "model": "tiny",
        "prompt": "a lighthouse at dusk",
        "width": SIZE,
        "height": SIZE,
        "guidance_scale": 7.5,
        "num_inference_steps": 3,
        "num_outputs": 1,
        "prompt_strength": 0.6,
        "scheduler": "K-LMS",
        "seed": 1234,
    }
    fields |= overrides
    for name in ("init_image", "mask"):
        value = fields.get(name)
        if isinstance(value, Image.Image):
            # Raw bytes: pydantic decodes base64 only from text, as JSON brings it.
            fields[name] = png(value)
    return GenerationRequest.model_validate(fields)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def init_image(width: int = SIZE, height: int = SIZE) -> Image.Image:
    """A smooth colour gradient: structure the model can keep or lose."""
    across = np.tile(np.linspace(0, 255, width), (height, 1))
    down = np.tile(np.linspace(0, 255, height)[:, None], (1, width))
    channels = [across, down, np.full((height, width), 90.0)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def square_mask(width: int = SIZE, height: int = SIZE) -> Image.Image:
    """diffusers' convention: the white rectangle in the middle is repainted, the rest kept."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mask


def pixels(image: Image.Image) -> NDArray[np.float64]:
    return np.asarray(image, dtype=np.float64)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def save_random_lora(model: Path, folder: Path, name: str, seed: int = 0) -> Path:
    """A LoRA for the tiny model at `model` with random, non-zero weights, as `name`.safetensors.

    Made as diffusers' training scripts make theirs: peft adapters on the UNet's attention
    projections and the text encoder's, saved with `save_lora_weights`.
    """
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    # init_lora_weights=False: peft's default starts the up-projections at zero, a no-op LoRA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_lora = LoraConfig(
            r=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
        unet = inject_adapter_in_model(unet_lora, unet)
        text_lora = LoraConfig(
            r=4, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
        )
        text_encoder_lora = inject_adapter_in_model(text_lora, text_encoder)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),  # type: ignore[no-untyped-call]
        text_encoder_lora_layers=convert_state_dict_to_diffusers(  # type: ignore[no-untyped-call]
            get_peft_model_state_dict(text_encoder_lora)
        ),
        weight_name=f"{name}.safetensors",
    )
    return folder / f"{name}.safetensors"


def save_as_kohya(lora: Path, path: Path) -> None:
    """The LoRA at `lora` (diffusers' layout) in kohya's layout, as A1111 and Civitai share them."""
    from safetensors.torch import load_file, save_file

    kohya: dict[str, torch.Tensor] = {}
    for key, value in load_file(lora).items():
        part, _, rest = key.partition(".")
        module, _, direction = rest.replace(".lora_linear_layer.", ".lora.").partition(".lora.")
        prefix = "lora_unet_" if part == "unet" else "lora_te_text_model_"
        name = prefix + module.replace(".", "_")
        kohya[f"{name}.lora_{direction}"] = value
        # alpha = rank: a scale of 1, as diffusers' layout (which has no alphas) implies.
        kohya[f"{name}.alpha"] = torch.tensor(float(min(value.shape)))
    save_file(kohya, path)


def save_family_lora(family: FamilyName, model: Path, folder: Path, name: str) -> Path:
    """A random LoRA for the tiny model of `family` at `model`, as `name`.safetensors."""
    from .loras_flow import save_random_flux_lora, save_random_sd3_lora
    from .loras_unet import save_random_sdxl_lora

    savers = {
        "sd1": save_random_lora,
        "sd2": save_random_lora,
        "sdxl": save_random_sdxl_lora,
        "sd3": save_random_sd3_lora,
        "flux-dev": save_random_flux_lora,
        "flux-schnell": save_random_flux_lora,
    }
    return savers[family](model, folder, name)
