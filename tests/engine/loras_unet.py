"""Random LoRAs for the tiny SDXL pipeline (tests/models/random_unet.py).

The tiny SD 2.x pipeline has SD 1.x's parts (one CLIPTextModel), so `save_random_lora` in
helpers.py serves it; SDXL adds a second text encoder, whose adapters need a file of their own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from transformers import CLIPTextModel, CLIPTextModelWithProjection

_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def save_random_sdxl_lora(model: Path, folder: Path, name: str, seed: int = 0) -> Path:
    """A LoRA for the tiny SDXL at `model` with random, non-zero weights, as `name`.safetensors.

    Made as diffusers' SDXL training scripts make theirs: peft adapters on the UNet's attention
    projections and on both text encoders', saved with `save_lora_weights`.
    """
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(model / "text_encoder_2")
    # init_lora_weights=False: peft's default starts the up-projections at zero, a no-op LoRA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # In place: the models gain the adapters' layers.
        inject_adapter_in_model(_lora(_UNET_TARGETS), unet)
        inject_adapter_in_model(_lora(_TEXT_TARGETS), text_encoder)
        inject_adapter_in_model(_lora(_TEXT_TARGETS), text_encoder_2)
    StableDiffusionXLPipeline.save_lora_weights(
        save_directory=folder,
        unet_lora_layers=_diffusers_layers(unet),
        text_encoder_lora_layers=_diffusers_layers(text_encoder),
        text_encoder_2_lora_layers=_diffusers_layers(text_encoder_2),
        weight_name=f"{name}.safetensors",
    )
    return folder / f"{name}.safetensors"


def _lora(targets: list[str]) -> LoraConfig:
    return LoraConfig(r=4, init_lora_weights=False, target_modules=targets)


def _diffusers_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module | torch.Tensor]:
    """The adapters' weights, named as diffusers' LoRA files name them."""
    peft_layers = get_peft_model_state_dict(model)
    layers: dict[str, torch.nn.Module | torch.Tensor] = convert_state_dict_to_diffusers(  # type: ignore[no-untyped-call]
        peft_layers
    )
    return layers
