"""Running one GenerationRequest through txt2img, img2img or inpaint."""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from PIL import Image

from sdserve.canonical import GenerationRequest
from sdserve.engine.guidance import guidance_cutoff
from sdserve.engine.pipelines import PipelineSet
from sdserve.engine.previews import latent_grid, previews
from sdserve.engine.prompts import weighted_embeddings
from sdserve.engine.safety import blanked, is_nsfw
from sdserve.engine.schedulers import make_scheduler, supports_init_image
from sdserve.families import FamilyName
from sdserve.loras import find_lora

Mode = Literal["txt2img", "img2img", "inpaint"]
OnStep = Callable[[int, int], None]
"""Called after every denoising step with (steps done, steps in the whole request)."""
OnPreview = Callable[[int, int, int, list[Image.Image]], None]
"""Called every `EngineOptions.preview_every` steps with (steps done, steps in all, the index
of the pipeline call's first image among the request's or batch's, a cheap preview of each
image of the call, engine/previews.py)."""


class UnsupportedRequest(ValueError):
    """A request this engine cannot run; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class EngineOptions:
    """The server's settings that shape every generation (`Settings` fields of the same names)."""

    loras_dir: Path | None = None
    """Folder of installed LoRAs; None: a request naming a LoRA is refused."""
    compel_everywhere: bool = False
    """Parse every request's prompts with compel's weighting syntax, asked for or not."""
    nsfw_check: bool = True
    """Run the safety check on every image; off, every verdict is False."""
    batch_images: bool = True
    """Make a request's images in one pipeline call (each its own generator: image i still
    reproduces with seed s+i, to within a level of 255); off, one call per image, exact.
    Inpainting always makes one image per call."""
    preview_every: int = 0
    """Offer previews of the images forming every this many steps (0: none)."""


@dataclass
class GeneratedImage:
    """One output image, the seed that reproduces it alone, and the safety check's verdict."""

    image: Image.Image
    seed: int
    nsfw: bool = False


def choose_mode(request: GenerationRequest) -> Mode:
    """Which pipeline `request` needs, refusing what none can run."""
    if request.num_inference_steps < 1:
        raise UnsupportedRequest(
            f"num_inference_steps must be at least 1 (got {request.num_inference_steps})"
        )
    if request.init_image is None:
        if request.mask is not None:
            raise UnsupportedRequest("a mask needs an init_image to paint into")
        return "txt2img"
    mode: Mode = "img2img" if request.mask is None else "inpaint"
    if not supports_init_image(request.scheduler):
        task = "inpainting" if mode == "inpaint" else "image-to-image"
        raise UnsupportedRequest(
            f"scheduler {request.scheduler} cannot be used for {task}; choose another, e.g. K-LMS"
        )
    return mode


def generate(
    pipes: PipelineSet,
    request: GenerationRequest,
    on_step: OnStep,
    options: EngineOptions = EngineOptions(),
    on_preview: OnPreview | None = None,
) -> list[GeneratedImage]:
    """Make the request's images (in one batched call unless `options.batch_images` is off),
    calling `on_step` after every denoising step, and `on_preview` every
    `options.preview_every` steps."""
    mode = choose_mode(request)
    init = _open_image(request.init_image, "RGB", "init_image", request)
    mask = _open_image(request.mask, "L", "mask", request)
    lora = _lora_file(request, options)
    seeds = [request.image_seed(index) for index in range(request.num_outputs)]
    # Batched inpainting strays from each seed's own image (up to 6 levels of 255 over ~8% of
    # the pixels, bench/batch_equivalence.py), so it keeps one call per image.
    batched = options.batch_images and mode != "inpaint"
    calls = [seeds] if batched else [[seed] for seed in seeds]
    progress = _Progress(on_step, len(calls), _previewing(pipes, options, on_preview))
    results = []
    with pipes.loras.applied(pipes.txt2img, lora, request.lora_scale):
        prompts = _prompt_arguments(pipes, request, options)
        for call in calls:
            images = _generate(pipes, request, mode, init, mask, call, progress, prompts)
            for seed, image in zip(call, images, strict=True):
                if init is not None and mask is not None:
                    # The VAE round trip alters every pixel; like A1111, the kept area comes back.
                    image = Image.composite(image, init, mask)
                results.append(_checked(pipes, request, image, seed, options))
    return results


def generate_batch(
    pipes: PipelineSet,
    requests: list[GenerationRequest],
    on_step: OnStep,
    options: EngineOptions = EngineOptions(),
    on_preview: OnPreview | None = None,
) -> list[list[GeneratedImage]]:
    """The images of several requests that share one `batch_key` (each with its own prompts
    and seeds), made in one pipeline call; each request's images in order.
    `on_step` counts the call's steps. Where one call cannot take them all (prompts weighted
    by compel, a pipeline without batches), the requests run one after another."""
    if len(requests) == 1:
        return [generate(pipes, requests[0], on_step, options, on_preview)]
    keys = {request.batch_key() for request in requests}
    if None in keys or len(keys) > 1:
        raise ValueError("only requests with one batch_key can share a pipeline call")
    first = requests[0]
    accepted = inspect.signature(pipes.txt2img.__call__).parameters
    weighted = options.compel_everywhere and pipes.family.compel
    if weighted or "num_images_per_prompt" not in accepted or not options.batch_images:
        return _one_after_another(pipes, requests, on_step, options, on_preview)
    seeds = [r.image_seed(i) for r in requests for i in range(r.num_outputs)]
    prompts: dict[str, Any] = {"prompt": [r.prompt for r in requests for _ in range(r.num_outputs)]}
    if pipes.family.negative_prompt:
        prompts["negative_prompt"] = [
            r.negative_prompt for r in requests for _ in range(r.num_outputs)
        ]
    progress = _Progress(on_step, 1, _previewing(pipes, options, on_preview))
    with pipes.loras.applied(pipes.txt2img, _lora_file(first, options), first.lora_scale):
        images = iter(_generate(pipes, first, "txt2img", None, None, seeds, progress, prompts))
    return [
        [
            _checked(pipes, request, next(images), request.image_seed(index), options)
            for index in range(request.num_outputs)
        ]
        for request in requests
    ]


def _one_after_another(
    pipes: PipelineSet,
    requests: list[GenerationRequest],
    on_step: OnStep,
    options: EngineOptions,
    on_preview: OnPreview | None,
) -> list[list[GeneratedImage]]:
    """Each request in its own call(s); steps counted across them all (the total supposes
    the requests still to come take as many steps as the last one)."""
    results = []
    done_before = 0
    images_before = 0
    for index, request in enumerate(requests):
        left = len(requests) - index
        last_total = 0

        def step(done: int, total: int, before: int = done_before, left: int = left) -> None:
            nonlocal last_total
            last_total = total
            on_step(before + done, before + total * left)

        shifted = _shifted(on_preview, images_before)
        results.append(generate(pipes, request, step, options, shifted))
        done_before += last_total
        images_before += request.num_outputs
    return results


def _shifted(on_preview: OnPreview | None, skip: int) -> OnPreview | None:
    """`on_preview` for a request whose first image is image `skip` of its batch."""
    if on_preview is None:
        return None
    hook = on_preview

    def preview(done: int, total: int, first: int, images: list[Image.Image]) -> None:
        hook(done, total, skip + first, images)

    return preview


def _checked(
    pipes: PipelineSet,
    request: GenerationRequest,
    image: Image.Image,
    seed: int,
    options: EngineOptions,
) -> GeneratedImage:
    """An output image after the safety check (blanked if flagged and the request says so)."""
    nsfw = options.nsfw_check and is_nsfw(pipes, image)
    if nsfw and request.blank_nsfw:
        image = blanked(image)
    return GeneratedImage(image=image, seed=seed, nsfw=nsfw)


def _lora_file(request: GenerationRequest, options: EngineOptions) -> Path | None:
    if request.lora is None:
        return None
    if options.loras_dir is None:
        raise UnsupportedRequest(f"LoRA {request.lora!r} was asked for, but no LoRA folder is set")
    return find_lora(options.loras_dir, request.lora)


def _prompt_arguments(
    pipes: PipelineSet, request: GenerationRequest, options: EngineOptions
) -> dict[str, Any]:
    """The prompts as the pipelines take them: text, or compel's weighted embeddings."""
    # Computed once per request, with the LoRA applied (it may change the text encoder).
    family = pipes.family
    # compel_everywhere weights what compel can: the API refuses an explicit use_compel on
    # families it cannot weight.
    if (request.use_compel or options.compel_everywhere) and family.compel:
        return weighted_embeddings(
            pipes.txt2img, family.name, request.prompt, request.negative_prompt
        )
    if not family.negative_prompt:
        return {"prompt": request.prompt}
    return {"prompt": request.prompt, "negative_prompt": request.negative_prompt}


def _generate(
    pipes: PipelineSet,
    request: GenerationRequest,
    mode: Mode,
    init: Image.Image | None,
    mask: Image.Image | None,
    seeds: list[int],
    progress: _Progress,
    prompts: dict[str, Any],
) -> list[Image.Image]:
    """The images of `seeds`, in one pipeline call, each from a generator of its own seed."""
    pipe = (
        pipes.txt2img
        if mode == "txt2img"
        else pipes.inpaint
        if mode == "inpaint"
        else pipes.img2img
    )
    # Families' pipelines differ in what they take (SD's img2img takes its size from the init
    # image, FLUX has no negative prompt): each gets only what its __call__ declares.
    accepted = inspect.signature(pipe.__call__).parameters
    if len(seeds) > 1 and "num_images_per_prompt" not in accepted:
        return [
            image
            for seed in seeds
            for image in _generate(pipes, request, mode, init, mask, [seed], progress, prompts)
        ]
    # A fresh scheduler per call, and a generator per image: image i of a request is then the
    # image a one-image request with its seed gives.
    pipe.scheduler = make_scheduler(request.scheduler, pipes.scheduler_config, pipes.family.name)
    generators = [torch.Generator(pipes.device).manual_seed(seed) for seed in seeds]
    # Any: diffusers annotates callback_on_step_end as taking two arguments; it passes four.
    arguments: dict[str, Any] = {
        **prompts,
        "guidance_scale": request.guidance_scale,
        "num_inference_steps": request.num_inference_steps,
        # Prompts given one per image (a batch of requests) need no repeating.
        "num_images_per_prompt": 1 if isinstance(prompts.get("prompt"), list) else len(seeds),
        "generator": generators if len(generators) > 1 else generators[0],
        "callback_on_step_end": progress,
    }
    width, height = working_size(pipes, request.width, request.height)
    arguments |= {"width": width, "height": height}
    cutoff = pipes.spec.guidance_cutoff
    if cutoff is not None and pipes.family.guidance_cutoff:
        progress.cutoff = guidance_cutoff(cutoff, inpaint=mode == "inpaint")
    arguments["callback_on_step_end_tensor_inputs"] = progress.tensor_inputs(pipe)
    if pipes.spec.guidance_rescale:
        arguments["guidance_rescale"] = pipes.spec.guidance_rescale
    if init is not None:
        arguments |= {"image": _fit(init, width, height), "strength": _strength(request)}
    if mode == "inpaint" and mask is not None:
        arguments["mask_image"] = _fit(mask, width, height)
    # The pipelines carry no safety checker (see load_pipelines): `generate` runs the check.
    progress.begin_call(width, height)
    output = pipe(**{k: v for k, v in arguments.items() if k in accepted}, return_dict=False)
    images: list[Image.Image] = output[0]
    progress.end_call(len(images))
    return [_fit(image, request.width, request.height) for image in images]


def working_size(pipes: PipelineSet, width: int, height: int) -> tuple[int, int]:
    """The size to draw at: the request's, or, for a model trained on smaller images, about its
    native size at the request's aspect ratio (the image is upscaled afterwards)."""
    native = pipes.native_size
    unet = getattr(pipes.txt2img, "unet", None)
    if native is None or unet is None or min(width, height) <= native:
        return width, height
    # Both sides must halve cleanly through the VAE and every UNet down block.
    unet_downs = len(unet.config["block_out_channels"]) - 1
    step = pipes.txt2img.vae_scale_factor * 2**unet_downs
    scale = native / min(width, height)
    return (
        max(step, round(width * scale / step) * step),
        max(step, round(height * scale / step) * step),
    )


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _strength(request: GenerationRequest) -> float:
    # diffusers runs int(steps * strength) steps and fails when that is none. Like A1111, a
    # strength too small for one step runs exactly one: 1.5 / steps stays clear of float rounding.
    return max(request.prompt_strength, min(1.0, 1.5 / request.num_inference_steps))


def _open_image(
    data: bytes | None, mode: str, field: str, request: GenerationRequest
) -> Image.Image | None:
    if data is None:
        return None
    try:
        image = Image.open(io.BytesIO(data)).convert(mode)
    except OSError as error:
        raise UnsupportedRequest(f"{field} is not a readable image") from error
    if image.size != (request.width, request.height):
        raise UnsupportedRequest(
            f"{field} is {image.width}x{image.height}, "
            f"but the request is {request.width}x{request.height}"
        )
    return image


class _StepCounting(Protocol):
    @property
    def num_timesteps(self) -> int: ...


@dataclass(frozen=True)
class _Previewing:
    """Where previews go and how often, for one model's family."""

    on_preview: OnPreview
    every: int
    family: FamilyName


def _previewing(
    pipes: PipelineSet, options: EngineOptions, on_preview: OnPreview | None
) -> _Previewing | None:
    if on_preview is None or options.preview_every < 1:
        return None
    return _Previewing(on_preview, options.preview_every, pipes.family.name)


class _Progress:
    """The step callback: counts steps across the request's pipeline calls and reports them,
    with previews of the images forming when asked for."""

    def __init__(self, on_step: OnStep, calls: int, previewing: _Previewing | None = None) -> None:
        self._on_step = on_step
        self._calls = calls
        self._done = 0
        self._previewing = previewing
        self._images_before = 0
        self._size = (0, 0)
        self.cutoff: Callable[..., dict[str, object]] | None = None
        """The model's guidance cutoff, run at each step before progress is counted."""

    def tensor_inputs(self, pipe: Any) -> list[str]:
        """The tensors the pipeline must hand the callback (among those it can)."""
        wanted = list(getattr(self.cutoff, "tensor_inputs", []))
        if self._previewing is not None:
            wanted.append("latents")
        allowed = getattr(pipe, "_callback_tensor_inputs", wanted)
        return [name for name in wanted if name in allowed]

    def begin_call(self, width: int, height: int) -> None:
        self._size = (width, height)

    def end_call(self, images: int) -> None:
        self._images_before += images

    def __call__(
        self, pipe: _StepCounting, step: int, timestep: object, tensors: dict[str, object]
    ) -> dict[str, object]:
        if self.cutoff is not None:
            tensors = self.cutoff(pipe, step, timestep, tensors)
        self._done += 1
        # num_timesteps is what diffusers really runs (second-order samplers take about twice
        # the steps, img2img only strength * steps); every call runs the same schedule.
        total = pipe.num_timesteps * self._calls
        self._on_step(self._done, total)
        previewing = self._previewing
        latents = tensors.get("latents")
        if previewing and self._done % previewing.every == 0 and isinstance(latents, torch.Tensor):
            grid = latent_grid(latents, pipe, *self._size)
            previewing.on_preview(
                self._done, total, self._images_before, previews(grid, previewing.family)
            )
        return tensors
