"""Loading Stable Diffusion pipelines through diffusers' own loaders, and caching them."""

from __future__ import annotations

import gc
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPImageProcessor

from sdserve.registry import ModelSpec

_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class PipelineSet:
    """One model's txt2img, img2img and inpaint pipelines, sharing one set of weights."""

    txt2img: StableDiffusionPipeline
    img2img: StableDiffusionImg2ImgPipeline
    inpaint: StableDiffusionInpaintPipeline
    scheduler_config: Mapping[str, object]
    """The model's own scheduler config, from which every request's scheduler is made."""
    device: str
    """The torch device the weights live on: cpu, cuda or cuda:N."""
    safety_checker: StableDiffusionSafetyChecker | None = None
    """The model's own NSFW checker, if it ships one; sdserve runs it, not the pipelines."""
    feature_extractor: CLIPImageProcessor | None = None
    """Prepares images for `safety_checker`."""
    native_size: int | None = None
    """The model's training size, when requests may be larger (`ModelSpec.native_size`)."""


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


def _quiet_progress_bars() -> None:
    # Worker logs are read by people; tqdm redraws from every load would drown them.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _load_txt2img(spec: ModelSpec, dtype: torch.dtype) -> StableDiffusionPipeline:
    if spec.kind == "hub":
        return StableDiffusionPipeline.from_pretrained(spec.source, dtype=dtype)
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model {spec.name}: {path} does not exist")
    if spec.kind == "folder":
        return StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype)
    # Without `config` diffusers would fetch the architecture's configs from the hub.
    return StableDiffusionPipeline.from_single_file(str(path), config=spec.config, dtype=dtype)


def load_pipelines(spec: ModelSpec, device: str) -> PipelineSet:
    """Load `spec` onto `device` as a txt2img, img2img and inpaint pipeline set."""
    device = resolve_device(device)
    # Half precision halves GPU memory at no visible cost; CPUs lack fast float16 kernels.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    _quiet_progress_bars()
    txt2img = _load_txt2img(spec, dtype).to(device)
    # from_pipe reuses txt2img's modules, so the three pipelines hold one copy of the weights.
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(txt2img)  # type: ignore[no-untyped-call]
    inpaint = StableDiffusionInpaintPipeline.from_pipe(txt2img)  # type: ignore[no-untyped-call]
    safety_checker = txt2img.safety_checker
    for pipe in (txt2img, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
        # A pipeline's own run of the checker blacks out whatever it flags; sdserve runs the
        # checker itself so that a client can have the verdict without losing the image.
        pipe.safety_checker = None
    return PipelineSet(
        txt2img=txt2img,
        img2img=img2img,
        inpaint=inpaint,
        scheduler_config=dict(txt2img.scheduler.config),
        device=device,
        safety_checker=safety_checker,
        feature_extractor=txt2img.feature_extractor,
        native_size=spec.native_size,
    )


class PipelineCache:
    """Loaded models by name, dropping the least recently used beyond `max_models`."""

    def __init__(self, device: str, max_models: int = 1) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1 (got {max_models})")
        self._device = resolve_device(device)
        self._max_models = max_models
        self._loaded: OrderedDict[str, PipelineSet] = OrderedDict()

    def get(self, spec: ModelSpec) -> PipelineSet:
        """The pipelines of `spec`, loading them (and evicting others) if needed."""
        pipes = self._loaded.get(spec.name)
        if pipes is not None:
            self._loaded.move_to_end(spec.name)
            return pipes
        # Evict before loading so that at most `max_models` models are ever in memory.
        while len(self._loaded) >= self._max_models:
            self._evict_oldest()
        pipes = load_pipelines(spec, self._device)
        self._loaded[spec.name] = pipes
        return pipes

    @property
    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        return list(self._loaded)

    def _evict_oldest(self) -> None:
        self._loaded.popitem(last=False)
        # The weights are only freed once unreferenced; CUDA keeps freed blocks until emptied.
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
