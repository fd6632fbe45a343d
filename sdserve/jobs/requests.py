"""Rules every dialect's request obeys, applied once: sizes, images, seeds."""

from __future__ import annotations

import secrets
from pathlib import Path

from sdserve.canonical import GenerationRequest, SchedulerName
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.inputs import alpha_mask, prepare_init_image, prepare_mask, read_image
from sdserve.loras import UnknownLora, find_lora
from sdserve.registry import ModelSpec
from sdserve.samplers import SAMPLERS

MIN_SIZE = 128
RANDOM_SEED_BOUND = 2**32
"""Random seeds are drawn below this, as A1111 does, so they are easy to read and type."""


def check_size(field: str, value: int, spec: ModelSpec) -> None:
    """Width and height: multiples of the model's size step from 128 to its maximum."""
    rules = spec.rules
    if value % rules.size_step or not MIN_SIZE <= value <= rules.max_size:
        raise InvalidInput(
            field,
            f"must be a multiple of {rules.size_step} between {MIN_SIZE} and {rules.max_size}"
            f" for model {spec.name} (got {value})",
        )


def check_scheduler(field: str, scheduler: SchedulerName, spec: ModelSpec, init: bool) -> None:
    """The sampler must be one the model's family runs, and able to start from an init image."""
    family = spec.rules.family
    if scheduler not in family.schedulers:
        raise InvalidInput(
            field,
            f"model {spec.name} ({family.title}) runs {', '.join(family.schedulers)} only;"
            f" {scheduler} has no equivalent for it (got {scheduler})",
        )
    if init and not SAMPLERS[scheduler].img2img:
        raise InvalidInput(
            field, f"{scheduler} cannot start from an init image; choose another, e.g. K-LMS"
        )


def _check_family(spec: ModelSpec, negative_prompt: str, use_compel: bool, prefix: str) -> None:
    family = spec.rules.family
    if negative_prompt.strip() and not family.negative_prompt:
        raise InvalidInput(
            f"{prefix}negative_prompt",
            f"model {spec.name} ({family.title}) has no negative prompt: its guidance is"
            " distilled into the model, so there is no unconditional pass to steer; leave it"
            " empty",
        )
    if use_compel and not family.compel:
        raise InvalidInput(
            f"{prefix}use_compel",
            f"compel cannot weight prompts of model {spec.name} ({family.title}): compel"
            " weights CLIP text encoders, and this model's prompts go through T5 as well",
        )


async def build_request(
    spec: ModelSpec,
    *,
    prompt: str,
    negative_prompt: str,
    width: int | None,
    height: int | None,
    guidance_scale: float | None,
    num_inference_steps: int | None,
    num_outputs: int,
    prompt_strength: float,
    scheduler: SchedulerName | None,
    seed: int | None,
    images: ImageFields,
    scheduler_field: str,
    use_compel: bool = False,
    lora: str | None = None,
    lora_scale: float = 1.0,
    blank_nsfw: bool = False,
    loras_dir: Path | None = None,
    lora_field: str = "lora",
    prefix: str = "",
) -> GenerationRequest:
    """Validate the model-dependent rules and load input images into a canonical request.

    A field left out (None) gets the model's default. `loras_dir` is the server's LoRA folder
    (`Settings.loras_dir`): a `lora` not installed there is refused as `lora_field`. Without it
    the worker refuses the job instead, as FAILED. `prefix` leads the names of the fields this
    checks (RunPod's `input.`).
    """
    rules = spec.rules
    width = rules.size if width is None else width
    height = rules.size if height is None else height
    scheduler = rules.scheduler if scheduler is None else scheduler
    check_size(images.width_field, width, spec)
    check_size(images.height_field, height, spec)
    check_scheduler(scheduler_field, scheduler, spec, bool(images.init_image))
    _check_family(spec, negative_prompt, use_compel, prefix)
    if lora is not None and loras_dir is not None:
        try:
            find_lora(loras_dir, lora)
        except UnknownLora as error:
            raise InvalidInput(lora_field, str(error)) from None
    init_png, mask_png = await images.load(width, height)
    return GenerationRequest(
        model=spec.name,
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        init_image=init_png,
        mask=mask_png,
        guidance_scale=rules.guidance_scale if guidance_scale is None else guidance_scale,
        num_inference_steps=rules.steps if num_inference_steps is None else num_inference_steps,
        num_outputs=num_outputs,
        prompt_strength=prompt_strength,
        scheduler=scheduler,
        seed=secrets.randbelow(RANDOM_SEED_BOUND) if seed is None else seed,
        use_compel=use_compel,
        lora=lora,
        lora_scale=lora_scale,
        blank_nsfw=blank_nsfw,
    )


class ImageFields:
    """The input images of one request, with the dialect's names for its fields."""

    def __init__(
        self,
        *,
        init_image: str | bytes | None,
        mask: str | bytes | None,
        mask_black_repaints: bool,
        names: tuple[str, str, str, str],
        fetch_timeout_s: float,
        fetch_max_bytes: int,
        mask_from_alpha: bool = False,
    ) -> None:
        self.init_image = init_image
        self.mask = mask
        self.mask_black_repaints = mask_black_repaints
        self.init_field, self.mask_field, self.width_field, self.height_field = names
        self._timeout_s = fetch_timeout_s
        self._max_bytes = fetch_max_bytes
        self.mask_from_alpha = mask_from_alpha
        """Read the mask's alpha channel instead: fully transparent pixels are repainted."""

    async def load(self, width: int, height: int) -> tuple[bytes | None, bytes | None]:
        if self.mask and not self.init_image:
            raise InvalidInput(self.mask_field, f"needs {self.init_field} to paint into")
        init_png = mask_png = None
        if self.init_image:
            image = await read_image(
                self.init_field, self.init_image, self._timeout_s, self._max_bytes
            )
            init_png = prepare_init_image(image, width, height)
        if self.mask:
            mask = await read_image(self.mask_field, self.mask, self._timeout_s, self._max_bytes)
            if self.mask_from_alpha:
                mask = alpha_mask(self.mask_field, mask)
            mask_png = prepare_mask(mask, width, height, invert=self.mask_black_repaints)
        return init_png, mask_png
