"""Writing a diffusers pipeline as an original (LDM/CompVis) single-file checkpoint.

diffusers' single-file loader only reads the original key layout (it converts with
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint` and `convert_ldm_clip_checkpoint`),
so this is their reverse, for the SD 1.x layout the tiny test pipeline uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from safetensors.torch import save_file

StateDict = dict[str, torch.Tensor]

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_TOP: dict[str, str] = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
_SLOT = {"resnets": 0, "attentions": 1}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def save_ldm_checkpoint(pipe: StableDiffusionPipeline, path: Path) -> None:
    """Save a StableDiffusionPipeline's weights as one LDM-layout .safetensors file."""
    checkpoint: StateDict = {}
    checkpoint |= ldm_unet(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    checkpoint |= ldm_vae(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types))
    checkpoint |= {_CLIP_PREFIX + k: v for k, v in pipe.text_encoder.state_dict().items()}
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))


def ldm_unet(state: StateDict, layers_per_block: int) -> StateDict:
    """UNet2DConditionModel keys to `model.diffusion_model.*` keys."""
    with_attention = {
        m[1] for key in state if (m := re.match(r"up_blocks\.(\d+)\.attentions", key))
    }
    return {
        _UNET_PREFIX + _unet_key(key, layers_per_block + 1, with_attention): value
        for key, value in state.items()
    }


def _unet_key(key: str, stride: int, up_with_attention: set[str]) -> str:
    # `stride`: LDM numbers each down/upsampler as a layer of its own after the block's layers.
    if key in _UNET_TOP:
        return _UNET_TOP[key]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = 1 + int(m[1]) * stride + int(m[3])
        return _sublayer(f"input_blocks.{index}.{_SLOT[m[2]]}", m[2], m[4])
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        index = 1 + int(m[1]) * stride + stride - 1
        return f"input_blocks.{index}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])  # resnet, attention, resnet
        return _sublayer(f"middle_block.{index}", m[1], m[3])
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = int(m[1]) * stride + int(m[3])
        return _sublayer(f"output_blocks.{index}.{_SLOT[m[2]]}", m[2], m[4])
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        index = int(m[1]) * stride + stride - 1
        slot = 2 if m[1] in up_with_attention else 1  # the upsampler comes after the attention
        return f"output_blocks.{index}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def _sublayer(prefix: str, kind: str, rest: str) -> str:
    if kind == "attentions":  # the transformers' own names are the same in both layouts
        return f"{prefix}.{rest}"
    name, param = rest.rsplit(".", 1)
    return f"{prefix}.{_UNET_RESNET[name]}.{param}"


def ldm_vae(state: StateDict, num_blocks: int) -> StateDict:
    """AutoencoderKL keys to `first_stage_model.*` keys."""
    to_ldm: dict[str, str] = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out: StateDict = {}
    for key, value in state.items():
        ldm_key = to_ldm.get(key) or _vae_key(key, num_blocks)
        if ".mid.attn_1." in ldm_key and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[_VAE_PREFIX + ldm_key] = value
    return out


def _vae_key(key: str, num_blocks: int) -> str:
    key = key.replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    # LDM numbers the decoder's blocks by resolution, highest first; diffusers in running order.
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
    raise KeyError(f"no LDM name for VAE key {key}")
