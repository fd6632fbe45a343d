"""Rules every dialect's request obeys, applied once: a dialect's draft, checked against its
model and with its images loaded, becomes the canonical request."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from sdserve.canonical import GenerationRequest, SchedulerName
from sdserve.demo.scenes import prompt_warning
from sdserve.jobs.errors import InvalidInput, raise_all
from sdserve.jobs.image_pool import ImagePool
from sdserve.jobs.inputs import (
    alpha_mask,
    open_image,
    prepare_init_image,
    prepare_mask,
    read_image,
)
from sdserve.jobs.outbound import UrlPolicy
from sdserve.loras import UnknownLora, find_lora
from sdserve.registry import ModelSpec
from sdserve.samplers import SAMPLERS, sampler_named

MIN_SIZE = 128
RANDOM_SEED_BOUND = 2**32
"""Random seeds are drawn below this, as A1111 does, so they are easy to read and type."""
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""C0 controls but tab and newlines, DEL, and lone surrogates (half a UTF-16 pair, no text)."""
MAX_COMPEL_NESTING = 8
"""Deepest nesting of parentheses in a prompt compel parses: its parser recurses per level and
overflows Python's stack near 48."""
MAX_COMPEL_PARTS = 16
"""Most weighted or combined parts in a prompt compel parses: each part weighted below 1 costs
the text encoder another pass over the whole prompt, each `.and()`/`.blend()` part a pass of its
own (bench/compel_cost.py)."""
_WEIGHT_SUFFIX = re.compile(r'(?<=[^\s\\(,"])[+-]+(?=[\s,.()"]|$)')
"""A run of `+` or `-` ending a word: compel's up- or down-weighting of that word."""


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


def check_prompt(field: str, value: str, max_chars: int | None) -> None:
    """A prompt: at most `max_chars` characters, and no control characters."""
    if max_chars is not None and len(value) > max_chars:
        raise InvalidInput(field, f"must be at most {max_chars} characters (got {len(value)})")
    found = _UNPRINTABLE.search(value)
    if found is not None:
        char = found.group()
        kind = "lone surrogates" if "\ud800" <= char <= "\udfff" else "control characters"
        raise InvalidInput(
            field, f"must not contain {kind} (got U+{ord(char):04X} at position {found.start()})"
        )


def check_compel_prompt(field: str, value: str) -> None:
    """A prompt compel will parse: nesting and weighted parts bounded, so that its parse and its
    text-encoder passes stay within a small multiple of a plain prompt's."""
    depth = deepest = parts = 0
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True  # `\(` is a literal parenthesis to compel
        elif char == "(":
            depth += 1
            parts += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == "," and depth:
            parts += 1  # a part of a .and() or .blend() list, or of a weighted group
    parts += value.count('"') // 2 + len(_WEIGHT_SUFFIX.findall(value))
    if deepest > MAX_COMPEL_NESTING:
        raise InvalidInput(
            field,
            f"must nest parentheses at most {MAX_COMPEL_NESTING} deep when compel weights it"
            f" (got {deepest})",
        )
    if parts > MAX_COMPEL_PARTS:
        raise InvalidInput(
            field,
            f"must have at most {MAX_COMPEL_PARTS} weighted or combined parts when compel weights"
            f" it (got {parts}; each '(', quoted part, '+' or '-' ending a word, and ',' inside"
            " parentheses counts one)",
        )


def _check_family(spec: ModelSpec, draft: RequestDraft, fields: FieldNames) -> None:
    family = spec.rules.family
    if draft.negative_prompt.strip() and not family.negative_prompt:
        raise InvalidInput(
            _named(fields, "negative_prompt"),
            f"model {spec.name} ({family.title}) has no negative prompt: its guidance is"
            " distilled into the model, so there is no unconditional pass to steer; leave it"
            " empty",
        )
    if draft.use_compel and not family.compel:
        raise InvalidInput(
            _named(fields, "use_compel"),
            f"compel cannot weight prompts of model {spec.name} ({family.title}): compel"
            " weights CLIP text encoders, and this model's prompts go through T5 as well",
        )


MaskConvention = Literal["white", "black", "alpha"]
"""Which mask pixels are repainted: white ones (diffusers', ModelsLab's), black ones (the
RunPod worker's), or fully transparent ones (OpenAI's, read from the alpha channel)."""

FieldNames = Mapping[str, str]
"""Canonical field name -> the name the client sent it under (`{"width": "input.width"}`),
so an error names the field as the client knows it; a name not in the map is unchanged."""


class RequestDraft(BaseModel):
    """A request as a dialect read it, in canonical names; None takes the model's default."""

    model_config = ConfigDict(frozen=True)

    model: str
    """An endpoint name or alias of the registry."""
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    num_outputs: int = 1
    prompt_strength: float = 0.8
    scheduler: SchedulerName | None = None
    scheduler_fallback: bool = False
    """A sampler the model cannot run runs its default instead of being refused (ModelsLab's
    clients send their habitual sampler whatever the model)."""
    seed: int | None = None
    use_compel: bool = False
    lora: str | None = None
    lora_scale: float = 1.0
    blank_nsfw: bool = False
    init_image: str | bytes | None = None
    """An http(s) URL, a data URI, base64 text or raw bytes; fetched at submission."""
    mask: str | bytes | None = None
    mask_convention: MaskConvention = "white"

    @classmethod
    def from_wire(cls, wire: BaseModel, fields: FieldNames, **given: object) -> RequestDraft:
        """The canonical fields a wire body has, each under the client's name for it (`fields`,
        else its own); `given` sets the others and overrides."""
        names = type(wire).model_fields
        read = {
            name: getattr(wire, _named(fields, name))
            for name in cls.model_fields
            if _named(fields, name) in names
        }
        return cls.model_validate({**read, **given})


def prefixed(prefix: str) -> dict[str, str]:
    """Field names for a dialect that nests every field (RunPod's `input.`)."""
    return {name: prefix + name for name in RequestDraft.model_fields}


def _named(fields: FieldNames, name: str) -> str:
    return fields.get(name, name)


@dataclass(frozen=True)
class InputLimits:
    """What the server allows a request's inputs (from `Settings`)."""

    fetch_timeout_s: float
    fetch_max_bytes: int
    loras_dir: Path | None = None
    """The server's LoRA folder: a `lora` not installed there is refused. None: the worker
    refuses the job instead, as FAILED."""
    max_prompt_chars: int | None = None
    """Longest prompt or negative prompt accepted, in characters. None: no limit."""
    compel_everywhere: bool = False
    """Every prompt is parsed by compel where the model's family allows it, asked for or not."""
    urls: UrlPolicy = field(default_factory=UrlPolicy)
    """Non-public networks and hosts image URLs may reach (default: none)."""
    images: ImagePool = field(default_factory=lambda: ImagePool(2), compare=False)
    """Where input images are decoded and resized."""


def rule_problems(
    spec: ModelSpec, values: Mapping[str, object], fields: FieldNames
) -> list[InvalidInput]:
    """The model's size and sampler rules broken by `values` (canonical names: width, height,
    scheduler, init_image; raw as sent, or as `build_request` resolved them). The API checks
    them beside a refused request's schema errors too, so that a request with several bad
    fields hears of them all at once; values of the wrong type are left out, as the schema
    reported them."""
    problems: list[InvalidInput] = []
    for name in ("width", "height"):
        value = values.get(name)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                check_size(_named(fields, name), value, spec)
            except InvalidInput as problem:
                problems.append(problem)
    given = values.get("scheduler")
    sampler = sampler_named(given) if isinstance(given, str) else None
    if sampler is not None:
        init = bool(values.get("init_image"))
        try:
            check_scheduler(_named(fields, "scheduler"), sampler, spec, init)
        except InvalidInput as problem:
            problems.append(problem)
    return problems


def request_warnings(spec: ModelSpec, request: GenerationRequest) -> list[str]:
    """What the sender should know though the request is accepted."""
    if spec.builtin and (warning := prompt_warning(request.prompt)) is not None:
        return [warning]
    return []


async def build_request(
    spec: ModelSpec, draft: RequestDraft, fields: FieldNames, limits: InputLimits
) -> GenerationRequest:
    """Validate the model-dependent rules and load input images into a canonical request."""
    rules = spec.rules
    width = rules.size if draft.width is None else draft.width
    height = rules.size if draft.height is None else draft.height
    scheduler = draft.scheduler
    if scheduler is None or (draft.scheduler_fallback and scheduler not in rules.family.schedulers):
        scheduler = rules.scheduler
    problems: list[InvalidInput] = []

    def check(rule: Callable[..., None], *args: object) -> None:
        try:
            rule(*args)
        except InvalidInput as problem:  # every bad field is reported at once
            problems.append(problem)

    check(check_prompt, _named(fields, "prompt"), draft.prompt, limits.max_prompt_chars)
    negative = draft.negative_prompt
    check(check_prompt, _named(fields, "negative_prompt"), negative, limits.max_prompt_chars)
    if (draft.use_compel or limits.compel_everywhere) and rules.family.compel:
        check(check_compel_prompt, _named(fields, "prompt"), draft.prompt)
        check(check_compel_prompt, _named(fields, "negative_prompt"), negative)
    sized = {
        "width": width,
        "height": height,
        "scheduler": scheduler,
        "init_image": draft.init_image,
    }
    problems += rule_problems(spec, sized, fields)
    check(_check_family, spec, draft, fields)
    if draft.lora is not None and limits.loras_dir is not None:
        try:
            find_lora(limits.loras_dir, draft.lora)
        except UnknownLora as error:
            problems.append(InvalidInput(_named(fields, "lora"), str(error)))
    raise_all(problems)
    init_png, mask_png = await _load_images(draft, fields, limits, width, height)
    return GenerationRequest(
        model=spec.name,
        prompt=draft.prompt,
        negative_prompt=draft.negative_prompt,
        width=width,
        height=height,
        init_image=init_png,
        mask=mask_png,
        guidance_scale=rules.guidance_scale
        if draft.guidance_scale is None
        else draft.guidance_scale,
        num_inference_steps=rules.steps
        if draft.num_inference_steps is None
        else draft.num_inference_steps,
        num_outputs=draft.num_outputs,
        prompt_strength=draft.prompt_strength,
        scheduler=scheduler,
        seed=secrets.randbelow(RANDOM_SEED_BOUND) if draft.seed is None else draft.seed,
        use_compel=draft.use_compel,
        lora=draft.lora,
        lora_scale=draft.lora_scale,
        blank_nsfw=draft.blank_nsfw,
    )


async def _load_images(
    draft: RequestDraft, fields: FieldNames, limits: InputLimits, width: int, height: int
) -> tuple[bytes | None, bytes | None]:
    """The init image and mask as PNGs of the request's size (diffusers' mask convention)."""
    init_field, mask_field = _named(fields, "init_image"), _named(fields, "mask")
    if draft.mask and not draft.init_image:
        raise InvalidInput(mask_field, f"needs {init_field} to paint into")
    if not draft.init_image:
        return None, None
    timeout_s, max_bytes = limits.fetch_timeout_s, limits.fetch_max_bytes
    init = await read_image(init_field, draft.init_image, timeout_s, max_bytes, limits.urls)
    mask = None
    if draft.mask:
        mask = await read_image(mask_field, draft.mask, timeout_s, max_bytes, limits.urls)
    # Decoding, resizing and PNG encoding run in the image processes, off the API's CPU.
    images = _Images(init_field, init, mask_field, mask, draft.mask_convention, width, height)
    return await limits.images.run(_prepare, images)


@dataclass(frozen=True)
class _Images:
    init_field: str
    init: bytes
    mask_field: str
    mask: bytes | None
    mask_convention: MaskConvention
    width: int
    height: int


def _prepare(images: _Images) -> tuple[bytes, bytes | None]:
    init = open_image(images.init_field, images.init)
    init_png = prepare_init_image(init, images.width, images.height)
    del init  # the decoded image is the big thing: gone before the mask is decoded
    if images.mask is None:
        return init_png, None
    mask = open_image(images.mask_field, images.mask)
    if images.mask_convention == "alpha":
        mask = alpha_mask(images.mask_field, mask)
    invert = images.mask_convention == "black"
    return init_png, prepare_mask(mask, images.width, images.height, invert=invert)
