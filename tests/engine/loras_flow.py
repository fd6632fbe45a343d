"""Random LoRAs for the tiny SD3 and FLUX models that tests.models.random_flow builds."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    StableDiffusion3Pipeline,
)
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

# The joint attention's projections, image side then text side, as diffusers' SD3 and FLUX
# DreamBooth LoRA scripts target them; blocks that lack some (FLUX's single blocks, SD3's last
# block) simply get fewer adapters.
_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TARGETS += ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def save_random_sd3_lora(model: Path, folder: Path, name: str, seed: int = 0) -> Path:
    """A LoRA for the tiny SD3 model at `model` with random, non-zero weights, as
    `name`.safetensors in `folder`."""
    transformer = SD3Transformer2DModel.from_pretrained(model / "transformer")
    StableDiffusion3Pipeline.save_lora_weights(
        save_directory=folder,
        transformer_lora_layers=_random_adapter(transformer, seed),
        weight_name=f"{name}.safetensors",
    )
    return folder / f"{name}.safetensors"


def save_random_flux_lora(model: Path, folder: Path, name: str, seed: int = 0) -> Path:
    """A LoRA for the tiny FLUX model at `model` with random, non-zero weights, as
    `name`.safetensors in `folder`."""
    transformer = FluxTransformer2DModel.from_pretrained(model / "transformer")
    FluxPipeline.save_lora_weights(
        save_directory=folder,
        transformer_lora_layers=_random_adapter(transformer, seed),
        weight_name=f"{name}.safetensors",
    )
    return folder / f"{name}.safetensors"


def _random_adapter(
    transformer: torch.nn.Module, seed: int
) -> dict[str, torch.nn.Module | torch.Tensor]:
    """peft adapters on `transformer`'s attention, as training scripts save them."""
    # init_lora_weights=False: peft's default starts the up-projections at zero, a no-op LoRA.
    config = LoraConfig(r=4, init_lora_weights=False, target_modules=_TARGETS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapted = inject_adapter_in_model(config, transformer)
    layers: dict[str, torch.nn.Module | torch.Tensor] = get_peft_model_state_dict(adapted)
    return layers
