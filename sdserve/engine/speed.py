"""GPU speed options applied to a loaded model: channels-last, fused QKV, torch.compile."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.pipelines import PipelineSet

log = logging.getLogger(__name__)

WARM_UP_STEPS = 2
"""Denoising steps of each warm-up generation: compiling needs one pass, not a whole image."""


@dataclass(frozen=True)
class SpeedOptions:
    """The speed options a model gets: each is on if its `models.toml` entry or the server's
    setting of the same name (`Settings.compile`, ...) says so."""

    compile: bool = False
    """torch.compile the denoiser and the VAE decoder (warmed up at worker start)."""
    channels_last: bool = False
    """Keep the UNet's and VAE's convolution weights in channels-last memory format."""
    fuse_qkv: bool = False
    """Fuse each attention's query, key and value projections into one matrix product."""

    def merged(self, compile: bool, channels_last: bool, fuse_qkv: bool) -> SpeedOptions:
        """These options, with those the model's own entry turns on added."""
        return SpeedOptions(
            compile=self.compile or compile,
            channels_last=self.channels_last or channels_last,
            fuse_qkv=self.fuse_qkv or fuse_qkv,
        )


def denoiser(pipes: PipelineSet) -> Any:
    """The model's UNet (SD 1.x, 2.x, SDXL) or transformer (SD3, FLUX)."""
    pipe = pipes.txt2img
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def apply_speed_options(pipes: PipelineSet, server: SpeedOptions = SpeedOptions()) -> SpeedOptions:
    """Apply the options `pipes`' model gets (its spec's, plus `server`'s) to its shared denoiser
    and VAE, once for all three pipelines; return the options applied."""
    spec = pipes.spec
    options = server.merged(spec.compile, spec.channels_last, spec.fuse_qkv)
    model, vae = denoiser(pipes), pipes.txt2img.vae
    is_unet = getattr(pipes.txt2img, "unet", None) is not None
    if options.channels_last:
        # A transformer's work is matrix products on token sequences: the format changes only its
        # patch embedding, so only convolutional denoisers are converted.
        targets = [model, vae] if is_unet else [vae]
        for module in targets:
            module.to(memory_format=torch.channels_last)
        log.info("model %s: channels-last for %s", spec.name,
                 ", ".join(type(m).__name__ for m in targets))  # fmt: skip
    if options.fuse_qkv and _fuse_qkv(spec.name, model, vae):
        pipes.loras.fused_denoiser = model
    if options.compile:
        _compile(spec.name, model, vae, pipes.device)
    pipes.compiled = options.compile
    return options


def warm_up(pipes: PipelineSet, width: int | None = None, height: int | None = None) -> None:
    """When `pipes` are compiled, compile them now with short generations at the model's default
    size (or `width` x `height`), so that the first request does not wait for it."""
    if not pipes.compiled:
        return
    rules = pipes.spec.rules
    started = time.perf_counter()
    # One image, then two: the second batch size makes dynamo recompile with the batch
    # dimension symbolic, so later batches of any size (a request's images, batched requests)
    # reuse it.
    for images in (1, 2):
        request = GenerationRequest(
            model=pipes.spec.name,
            prompt="warm-up",
            width=width or rules.size,
            height=height or rules.size,
            guidance_scale=rules.guidance_scale,
            num_inference_steps=WARM_UP_STEPS,
            num_outputs=images,
            prompt_strength=1.0,
            scheduler=rules.scheduler,
            seed=0,
        )
        generate(pipes, request, _ignore_steps, EngineOptions(nsfw_check=False))
    log.info("compiled %s in %.1f s", pipes.spec.name, time.perf_counter() - started)


def _ignore_steps(done: int, total: int) -> None:
    pass


def _fuse_qkv(name: str, model: Any, vae: Any) -> bool:
    """Fuse what offers it; return whether the denoiser was fused."""
    fused = []
    for module in (model, vae):
        fuse = getattr(module, "fuse_qkv_projections", None)
        if fuse is None:
            log.info("model %s: %s has no fused QKV projections; left as it is",
                     name, type(module).__name__)  # fmt: skip
            continue
        try:
            fuse()
        except ValueError as error:  # diffusers refuses attention with added KV projections
            log.info("model %s: %s: no fused QKV projections (%s)",
                     name, type(module).__name__, error)  # fmt: skip
            continue
        fused.append(type(module).__name__)
    if fused:
        log.info("model %s: fused QKV projections in %s", name, ", ".join(fused))
    return type(model).__name__ in fused


def _compile(name: str, model: Any, vae: Any, device: str) -> None:
    # In place (nn.Module.compile), so the three pipelines, which share these modules, all run
    # the compiled forward and the modules keep their diffusers class and attributes.
    # mode: inductor's default on CUDA too. "reduce-overhead" records a CUDA graph per input
    # shape, and a batch of any size can come; "max-autotune(-no-cudagraphs)" benchmarks
    # kernels again for every new shape, which multiplies the compile time.
    # dynamic=None (torch's automatic dynamic shapes): the first shape compiles a static graph,
    # the first other one recompiles with the changed dimensions symbolic, and that graph serves
    # all later sizes; warm_up makes both compiles for the batch dimension, so a batch of any
    # size runs at once, while the first request at another image size compiles once more.
    # (dynamic=True, one symbolic graph from the start, had not compiled the tiny test model
    # after 10 minutes on 2 busy CPU cores; its static graph took ~3.)
    model.compile()
    vae.decoder.compile()
    log.info("model %s: torch.compile of %s and the VAE decoder on %s (compiled on first use)",
             name, type(model).__name__, device)  # fmt: skip
