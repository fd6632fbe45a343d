"""Which family a model is, read from its own configs or checkpoint keys (never its name).

Torch-free, so the API process can validate requests against a model it never loads: a
diffusers folder or hub id is read through its `model_index.json` and component configs, a
single `.safetensors` file through the tensor names and shapes in its header.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdserve.families import FamilyName, served_titles


class UnservedModel(ValueError):
    """A model whose configs cannot be read, or of a family sdserve does not serve."""


@dataclass(frozen=True)
class DetectedModel:
    family: FamilyName
    size: int | None = None
    """Default width and height from its config (sample size x VAE scale), when it says."""


_SD_CLASSES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)
_SDXL_CLASSES = (
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
)
_SD3_CLASSES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
_FLUX_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline")

# Tensor names that mark each family in an original (non-diffusers) checkpoint: the ones
# diffusers' single-file loader reads them by (`CHECKPOINT_KEY_NAMES`), with or without the
# `model.diffusion_model.` prefix that some exporters add for FLUX and SD3.
_FLUX_KEY = "double_blocks.0.img_attn.norm.key_norm.scale"
_FLUX_GUIDANCE_KEY = "guidance_in.in_layer.weight"
_SD3_KEY = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
_SDXL_KEY = "conditioner.embedders.1.model.positional_embedding"
_SDXL_REFINER_KEY = "conditioner.embedders.0.model.text_projection"
_SD2_KEY = "cond_stage_model.model.token_embedding.weight"
_SD1_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
_UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
_PREFIX = "model.diffusion_model."


def detect_model(name: str, source: str, kind: str) -> DetectedModel:
    """The family of model `name` from `source` (kind: folder, single_file or hub)."""
    try:
        if kind == "single_file":
            return _detect_checkpoint(Path(source).expanduser())
        return _detect_pipeline(_ConfigReader(source, kind))
    except UnservedModel as error:
        raise UnservedModel(f"model {name} ({source}): {error}") from None
    except (OSError, ValueError, KeyError) as error:
        raise UnservedModel(
            f"model {name}: cannot read its configs from {source}: {error}"
        ) from None


def _unserved(found: str) -> UnservedModel:
    return UnservedModel(f"found {found}; sdserve serves {served_titles()}")


class _ConfigReader:
    """Reads a diffusers pipeline's JSON configs from a folder or the hub (its cache first)."""

    def __init__(self, source: str, kind: str) -> None:
        self._source = source
        self._kind = kind

    def read(self, path: str) -> dict[str, Any]:
        if self._kind == "folder":
            file = Path(self._source).expanduser() / path
            if not file.exists():
                raise FileNotFoundError(f"{file} does not exist")
        else:
            from huggingface_hub import hf_hub_download

            subfolder, _, filename = path.rpartition("/")
            file = Path(hf_hub_download(self._source, filename, subfolder=subfolder or None))
        config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        return config


def _detect_pipeline(configs: _ConfigReader) -> DetectedModel:
    index = configs.read("model_index.json")
    class_name = str(index.get("_class_name", "an unnamed pipeline"))
    if class_name in _SD_CLASSES:
        unet = configs.read("unet/config.json")
        _refuse_inpainting_only(unet.get("in_channels"))
        # SD 2.x's UNet projects attention inputs linearly; SD 1.x's convolves them.
        family: FamilyName = "sd2" if unet.get("use_linear_projection") else "sd1"
        return DetectedModel(family, _config_size(configs, unet))
    if class_name in _SDXL_CLASSES:
        if not index.get("text_encoder") or index["text_encoder"][0] is None:
            raise _unserved("an SDXL refiner (it needs a base model's latents)")
        unet = configs.read("unet/config.json")
        _refuse_inpainting_only(unet.get("in_channels"))
        return DetectedModel("sdxl", _config_size(configs, unet))
    if class_name in _SD3_CLASSES:
        transformer = configs.read("transformer/config.json")
        return DetectedModel("sd3", _config_size(configs, transformer))
    if class_name in _FLUX_CLASSES:
        transformer = configs.read("transformer/config.json")
        distilled = bool(transformer.get("guidance_embeds"))
        return DetectedModel("flux-dev" if distilled else "flux-schnell")
    raise _unserved(f"a {class_name}")


def _refuse_inpainting_only(in_channels: object) -> None:
    if in_channels == 9:
        raise _unserved("an inpainting-only model (its UNet takes 9 channels)")


def _config_size(configs: _ConfigReader, denoiser: dict[str, Any]) -> int | None:
    """The size the model was trained at: its latent sample size times the VAE's scale."""
    sample_size = denoiser.get("sample_size")
    if not isinstance(sample_size, int):
        return None
    vae = configs.read("vae/config.json")
    return int(sample_size * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1))


def _detect_checkpoint(path: Path) -> DetectedModel:
    if path.suffix != ".safetensors":
        raise UnservedModel(
            "only .safetensors checkpoints can be inspected without running their code;"
            " convert it, or set `family` for it in the models file"
        )
    shapes = safetensors_shapes(path)

    def has(key: str) -> bool:
        return key in shapes or _PREFIX + key in shapes

    if has(_FLUX_KEY):
        return DetectedModel("flux-dev" if has(_FLUX_GUIDANCE_KEY) else "flux-schnell")
    if has(_SD3_KEY):
        return DetectedModel("sd3")
    unet_in = shapes.get(_UNET_IN_KEY)
    if unet_in is not None and len(unet_in) > 1:
        _refuse_inpainting_only(unet_in[1])
    if _SDXL_KEY in shapes:
        return DetectedModel("sdxl")
    if _SDXL_REFINER_KEY in shapes:
        raise _unserved("an SDXL refiner (it needs a base model's latents)")
    if _SD2_KEY in shapes:
        return DetectedModel("sd2")
    if _SD1_KEY in shapes:
        return DetectedModel("sd1")
    raise _unserved("no Stable Diffusion or FLUX.1 tensors")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes of a .safetensors file, read from its header alone."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError(f"{path} is not a .safetensors file (header of {length} bytes)")
        header: dict[str, Any] = json.loads(file.read(length))
    return {
        key: list(value.get("shape", []))
        for key, value in header.items()
        if key != "__metadata__" and isinstance(value, dict)
    }
