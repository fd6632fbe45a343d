"""Writing a diffusers pipeline as an original (LDM/CompVis) single-file checkpoint.

diffusers' single-file loader only reads the original key layout (it converts with
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint` and
`convert_open_clip_checkpoint`), so this is their reverse, for the SD 1.x, SD 2.x and SDXL
layouts the tiny test pipelines use.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from safetensors.torch import save_file
from transformers import PreTrainedModel

StateDict = dict[str, torch.Tensor]

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
_OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x's OpenCLIP ViT-H
_XL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."  # SDXL's CLIP-L
_XL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP bigG


def _table(*path: str) -> dict[str, str]:
    """One of diffusers' diffusers-to-LDM name tables (it types them all as `object`)."""
    table: Any = DIFFUSERS_TO_LDM_MAPPING
    for name in path:
        table = table[name]
    return dict(table)


_UNET_TOP = {
    **_table("unet", "layers"),
    # SDXL's size and pooled-text conditioning; absent from UNets without it.
    **_table("unet", "addition_embed_type"),
}
_VAE_TOP = _table("vae")
_OPEN_CLIP_TOP = _table("openclip", "layers")
# Renames inside each layer, diffusers' name to OpenCLIP's; applied one after another.
_OPEN_CLIP_LAYER = _table("openclip", "transformer")
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
    """Save an SD 1.x StableDiffusionPipeline's weights as one LDM-layout .safetensors file."""
    _save(pipe, ldm_clip(pipe.text_encoder, _CLIP_PREFIX), path)


def save_sd2_checkpoint(pipe: StableDiffusionPipeline, path: Path) -> None:
    """Save an SD 2.x pipeline as one LDM-layout file, its text encoder in OpenCLIP's layout."""
    _save(pipe, ldm_open_clip(pipe.text_encoder, _OPEN_CLIP_PREFIX), path)


def save_sdxl_checkpoint(pipe: StableDiffusionXLPipeline, path: Path) -> None:
    """Save an SDXL pipeline as one file in the layout of Stability's sd_xl_base_1.0."""
    text = ldm_clip(pipe.text_encoder, _XL_CLIP_PREFIX)
    text |= ldm_open_clip(pipe.text_encoder_2, _XL_OPEN_CLIP_PREFIX)
    _save(pipe, text, path)


def _save(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, text: StateDict, path: Path
) -> None:
    checkpoint = ldm_unet(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    checkpoint |= ldm_vae(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types))
    checkpoint |= text
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))


def _text_model_keys(encoder: PreTrainedModel) -> StateDict:
    # transformers >= 5.6 flattened CLIPTextModel's keys (no `text_model.`); put it back, as
    # CLIPTextModelWithProjection and diffusers' tables still have it.
    return {
        key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}": value
        for key, value in encoder.state_dict().items()
    }


def ldm_clip(encoder: PreTrainedModel, prefix: str) -> StateDict:
    """A CLIPTextModel's keys under `prefix`, which ends in `text_model.`: OpenAI CLIP's layout."""
    return {
        prefix + key.removeprefix("text_model."): value
        for key, value in _text_model_keys(encoder).items()
    }


def ldm_open_clip(encoder: PreTrainedModel, prefix: str) -> StateDict:
    """A CLIPTextModel(WithProjection)'s keys in OpenCLIP's layout, under `prefix`."""
    out: StateDict = {}
    in_proj: defaultdict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in _text_model_keys(encoder).items():
        if key in _OPEN_CLIP_TOP:
            # OpenCLIP multiplies by its projection (x @ P); a Linear by its weight transposed.
            out[prefix + _OPEN_CLIP_TOP[key]] = (
                value.T if key == "text_projection.weight" else value
            )
            continue
        ldm_key = key
        for name, ldm_name in _OPEN_CLIP_LAYER.items():
            ldm_key = ldm_key.replace(name, ldm_name)
        if not ldm_key.startswith("resblocks."):
            raise KeyError(f"no OpenCLIP name for text encoder key {key}")
        if m := re.fullmatch(r"(.+\.attn)\.([qkv])_proj\.(weight|bias)", ldm_key):
            in_proj[f"{m[1]}.in_proj_{m[3]}"][m[2]] = value
        else:
            out[f"{prefix}transformer.{ldm_key}"] = value
    for ldm_key, parts in in_proj.items():
        # OpenCLIP keeps one input projection, the query's, key's and value's rows stacked.
        out[f"{prefix}transformer.{ldm_key}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


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
    out: StateDict = {}
    for key, value in state.items():
        ldm_key = _VAE_TOP.get(key) or _vae_key(key, num_blocks)
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
