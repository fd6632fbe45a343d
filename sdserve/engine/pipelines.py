"""Loading a model's pipelines through diffusers' own loaders, whatever its family."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers.pipelines.auto_pipeline import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    StableDiffusion3Pipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from transformers import CLIPImageProcessor

from sdserve.engine.loras import LoraAdapters
from sdserve.engine.memory import ModelTooLarge, resident_bytes, weights_bytes
from sdserve.families import FLOW_FAMILIES, Family, FamilyName
from sdserve.registry import ModelSpec

log = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

TXT2IMG_CLASSES: dict[FamilyName, Any] = {
    "sd1": StableDiffusionPipeline,
    "sd2": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux-dev": FluxPipeline,
    "flux-schnell": FluxPipeline,
}
"""Each family's text-to-image pipeline: what a single file loads as, and what a folder must be."""

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class PipelineSet:
    """One model's txt2img, img2img and inpaint pipelines, sharing one set of weights."""

    txt2img: Any
    img2img: Any
    inpaint: Any
    # Any: each family's pipelines are different diffusers classes with different call
    # arguments; `generate` passes each only the arguments its __call__ declares.
    spec: ModelSpec
    """The model, inspected: its family and rules."""
    scheduler_config: Mapping[str, object]
    """The model's own scheduler config, from which every request's scheduler is made."""
    device: str
    """The torch device the weights run on: cpu, cuda or cuda:N."""
    weights_bytes: int = 0
    """Memory its weights take on the device."""
    safety_checker: StableDiffusionSafetyChecker | None = None
    """The model's own NSFW checker, if it ships one; sdserve runs it, not the pipelines."""
    feature_extractor: CLIPImageProcessor | None = None
    """Prepares images for `safety_checker`."""
    loras: LoraAdapters = field(default_factory=LoraAdapters)
    """The LoRAs loaded into this model so far, switched on per request."""
    compiled: bool = False
    """Whether torch.compile wraps its denoiser and VAE decoder (engine/speed.py)."""

    @property
    def family(self) -> Family:
        return self.spec.rules.family

    @property
    def native_size(self) -> int | None:
        """The model's training size, when requests may be larger (`ModelSpec.native_size`)."""
        return self.spec.native_size


def resolve_device(device: str) -> str:
    """Turn a device setting (auto, cpu, cuda, cuda:N) into the torch device to use."""
    if not _DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {device!r})")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ValueError(f"device {device} was asked for, but torch sees {count} CUDA devices")
    return device


def model_dtype(spec: ModelSpec, device: str) -> torch.dtype:
    """The precision of `spec`'s weights on `device`: its setting, else the family's best."""
    if spec.dtype != "auto":
        return _DTYPES[spec.dtype]
    if not device.startswith("cuda"):
        return torch.float32  # CPUs lack fast half-precision kernels
    # SD3 and FLUX were trained in bfloat16 and overflow in float16; the UNet families run
    # float16 (SDXL's VAE is upcast where it would overflow: diffusers' `force_upcast`).
    return torch.bfloat16 if spec.rules.family.name in FLOW_FAMILIES else torch.float16


def _quiet_progress_bars() -> None:
    # Worker logs are read by people; tqdm redraws from every load would drown them.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _load_txt2img(spec: ModelSpec, dtype: torch.dtype) -> Any:
    family = spec.rules.family.name
    if spec.kind == "hub":
        return AutoPipelineForText2Image.from_pretrained(spec.source, dtype=dtype)  # type: ignore[no-untyped-call]
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model {spec.name}: {path} does not exist")
    if spec.kind == "folder":
        return AutoPipelineForText2Image.from_pretrained(str(path), dtype=dtype)  # type: ignore[no-untyped-call]
    # Without `config` diffusers would fetch the architecture's configs from the hub.
    return TXT2IMG_CLASSES[family].from_single_file(str(path), config=spec.config, dtype=dtype)


def load_pipelines(spec: ModelSpec, device: str) -> PipelineSet:
    """Load `spec` onto `device` as a txt2img, img2img and inpaint pipeline set."""
    spec = spec.inspected()
    device = resolve_device(device)
    dtype = model_dtype(spec, device)
    _quiet_progress_bars()
    txt2img = _load_txt2img(spec, dtype)
    expected = TXT2IMG_CLASSES[spec.rules.family.name]
    if not isinstance(txt2img, expected):
        raise ValueError(
            f"model {spec.name}: its configs say {spec.rules.family.title}, but diffusers loaded"
            f" it as a {type(txt2img).__name__}"
        )
    _place(txt2img, spec, device)
    if spec.vae_tiling:
        txt2img.vae.enable_tiling()
    # from_pipe reuses txt2img's modules, so the three pipelines hold one copy of the weights.
    img2img = AutoPipelineForImage2Image.from_pipe(txt2img)  # type: ignore[no-untyped-call]
    inpaint = AutoPipelineForInpainting.from_pipe(txt2img)  # type: ignore[no-untyped-call]
    safety_checker = getattr(txt2img, "safety_checker", None)
    for pipe in (txt2img, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
        if hasattr(pipe, "safety_checker"):
            # A pipeline's own run of the checker blacks out whatever it flags; sdserve runs
            # the checker itself so that a client can have the verdict without losing the image.
            pipe.safety_checker = None
    return PipelineSet(
        txt2img=txt2img,
        img2img=img2img,
        inpaint=inpaint,
        spec=spec,
        scheduler_config=dict(txt2img.scheduler.config),
        device=device,
        weights_bytes=_resident_bytes(txt2img, spec, device),
        safety_checker=safety_checker,
        feature_extractor=getattr(txt2img, "feature_extractor", None),
    )


def _place(pipe: Any, spec: ModelSpec, device: str) -> None:
    """Move the weights to `device`, or let diffusers' offload move them as they are used."""
    if spec.offload == "none" or not device.startswith("cuda"):
        if spec.offload != "none":
            log.warning("model %s: offload=%s is for CUDA devices; ignored on %s",
                        spec.name, spec.offload, device)  # fmt: skip
        try:
            pipe.to(device)
        except torch.OutOfMemoryError:
            raise ModelTooLarge(
                f"model {spec.name} does not fit in {device}'s free memory; set `offload ="
                ' "model"` (or "sequential") or a smaller dtype for it in the models file'
            ) from None
        return
    if spec.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def _resident_bytes(pipe: Any, spec: ModelSpec, device: str) -> int:
    sizes = [
        weights_bytes(component)
        for component in pipe.components.values()
        if isinstance(component, torch.nn.Module)
    ]
    return resident_bytes(sizes, spec, device)
