"""The model registry: endpoint names and aliases mapped to model sources (no torch here)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.canonical import SchedulerName
from sdserve.detect import UnservedModel, detect_model
from sdserve.families import FAMILIES, Family, FamilyName
from sdserve.samplers import Scheduler

DEFAULT_MODEL = "default"
DEFAULT_ALIASES = ("stable-diffusion-v1", "stabilityai/stable-diffusion-2-1")
"""Names the hosted APIs' own examples use; they answer with the default model."""

# The built-in demo model (sdserve.demo trains and scores it): the default when none is
# configured. Its serving defaults live here, with the default spec they make.
DEMO_MODEL_DIR = Path(__file__).parent / "demo" / "model"
"""The trained model, in diffusers format, shipped inside the package."""
NATIVE_SIZE = 64
"""The size the demo model draws at; larger requests get its image upscaled."""
DEMO_GUIDANCE = 3.0
"""Its default guidance scale: it follows prompts best at 2-3 and falls apart above about 4."""
DEMO_SIZE = 512
"""Its default width and height: what clients of the hosted APIs expect (it draws at 64)."""
DEMO_STEPS = 25
"""Its default denoising steps: more change nothing visible in its 64x64 drawings."""
DEMO_GUIDANCE_CUTOFF = 0.4
"""Guidance stops after 40% of the steps: the hosted APIs' usual 7.5 then follows prompts as 3
does (guidance late in sampling is what breaks its colours; see the README's evaluation)."""

SourceKind = Literal["folder", "single_file", "hub"]


Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Offload = Literal["none", "model", "sequential"]


@dataclass(frozen=True)
class ModelRules:
    """A model's defaults and rules: its family's, overridden by its `models.toml` entry."""

    family: Family
    size: int
    """Default width and height."""
    steps: int
    guidance_scale: float
    scheduler: SchedulerName
    size_step: int
    """Widths and heights must be multiples of this."""
    max_size: int


class ModelSpec(BaseModel):
    """One servable model: where it comes from, and its `models.toml` settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    source: str
    """A Hugging Face hub id, a local diffusers folder, or a single-file .safetensors/.ckpt."""
    aliases: tuple[str, ...] = ()
    config: str | None = None
    """For single-file checkpoints: a diffusers folder or hub id whose configs describe it."""
    family: FamilyName | None = None
    """Read from the model's configs when the registry loads; set it only for a .ckpt file."""
    size: int | None = Field(default=None, ge=64, le=4096)
    """Default width and height (default: the model's training size, else its family's)."""
    steps: int | None = Field(default=None, ge=1, le=500)
    """Default denoising steps (default: its family's)."""
    guidance_scale: float | None = Field(default=None, ge=1, le=20)
    """The guidance scale of requests that give none (default: its family's)."""
    scheduler: Scheduler | None = None
    """Default sampler (default: its family's)."""
    size_step: int | None = Field(default=None, ge=8, le=256)
    """Widths and heights must be multiples of this (default: 8, or 16 for SD3 and FLUX)."""
    max_size: int | None = Field(default=None, ge=128, le=4096)
    """Largest width or height accepted, in pixels (default: its family's)."""
    guidance_cutoff: float | None = Field(default=None, gt=0, le=1)
    """SD 1.x/2.x: stop classifier-free guidance after this fraction of the steps (diffusers'
    SDCFGCutoffCallback); strong guidance then shapes the image without breaking its colours."""
    guidance_rescale: float = Field(default=0.0, ge=0, le=1)
    """diffusers' guidance rescale (0: off), which keeps strong guidance from overexposing."""
    dtype: Dtype = "auto"
    """Weights' precision; auto: float16 on CUDA (bfloat16 for SD3 and FLUX), float32 on CPU."""
    offload: Offload = "none"
    """diffusers' CPU offload on CUDA: `model` (whole components) or `sequential` (layers)."""
    vae_tiling: bool = False
    """Decode large images tile by tile, to bound the VAE's memory."""
    compile: bool = False
    """torch.compile the denoiser and the VAE decoder; compiled at worker start for the model's
    default size, before the worker takes jobs."""
    channels_last: bool = False
    """Keep the UNet's and the VAE's weights in channels-last memory format (faster convolutions
    on recent NVIDIA GPUs)."""
    fuse_qkv: bool = False
    """Fuse each attention's query, key and value projections into one matrix product
    (diffusers' `fuse_qkv_projections`), where the family's denoiser and VAE offer it."""
    price: float = Field(default=0.0, ge=0)
    """Cost reported per generated image (DeepInfra's `inference_status.cost`), default 0."""
    native_size: int | None = Field(default=None, ge=64, le=4096)
    """The size the model was trained at, when smaller than requests may be: images are made
    at about this size (the request's aspect ratio kept) and upscaled to the requested one."""
    builtin: bool = False
    """True for the demo model shipped in the package, the default when none is configured."""
    config_size: int | None = None
    """The training size its config gives; set when the registry inspects it."""

    @property
    def kind(self) -> SourceKind:
        if self.source.endswith((".safetensors", ".ckpt")):
            return "single_file"
        if Path(self.source).expanduser().is_dir() or self.source.startswith((".", "/", "~")):
            return "folder"
        return "hub"

    def inspected(self) -> ModelSpec:
        """This spec with its family read from the model's own configs (UnservedModel if it
        cannot be read or is of a family sdserve does not serve)."""
        if self.family is not None:
            return self
        found = detect_model(self.name, self.source, self.kind)
        return self.model_copy(update={"family": found.family, "config_size": found.size})

    @property
    def rules(self) -> ModelRules:
        """Its defaults and rules; the spec must have been inspected."""
        if self.family is None:
            raise RuntimeError(f"model {self.name} has not been inspected")
        family = FAMILIES[self.family]
        return ModelRules(
            family=family,
            size=self.size or self.config_size or family.size,
            steps=self.steps or family.steps,
            guidance_scale=self.guidance_scale or family.guidance_scale,
            scheduler=self.scheduler or family.scheduler,
            size_step=self.size_step or family.size_step,
            max_size=self.max_size or family.max_size,
        )


class ModelFacts(BaseModel):
    """What a client needs to know of a model: its family, defaults and size rules."""

    model_config = ConfigDict(extra="forbid")

    family: FamilyName
    family_title: str
    width: int
    """The default width and height; `size_step` and `max_size` bound the others."""
    height: int
    num_inference_steps: int
    guidance_scale: float
    scheduler: SchedulerName
    schedulers: list[SchedulerName]
    """The samplers this model can run."""
    size_step: int
    max_size: int
    negative_prompt: bool
    """Whether the model takes a negative prompt."""
    compel: bool
    """Whether compel can weight its prompts."""


def describe(spec: ModelSpec) -> ModelFacts:
    """What a client needs to know of a model: its family, defaults and size rules."""
    rules = spec.rules
    return ModelFacts(
        family=rules.family.name,
        family_title=rules.family.title,
        width=rules.size,
        height=rules.size,
        num_inference_steps=rules.steps,
        guidance_scale=rules.guidance_scale,
        scheduler=rules.scheduler,
        schedulers=list(rules.family.schedulers),
        size_step=rules.size_step,
        max_size=rules.max_size,
        negative_prompt=rules.family.negative_prompt,
        compel=rules.family.compel,
    )


def summary(spec: ModelSpec) -> str:
    """One line on a model for messages: `default (Stable Diffusion 1.x, 512x512, 25 steps,
    guidance 3.0)`."""
    rules = spec.rules
    return (
        f"{spec.name} ({rules.family.title}, {rules.size}x{rules.size}, {rules.steps} steps,"
        f" guidance {rules.guidance_scale})"
    )


class ModelRegistry:
    """Resolves endpoint names and aliases to models."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._names: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in (spec.name, *spec.aliases):
                self._names[name] = spec

    def resolve(self, name: str) -> ModelSpec | None:
        return self._names.get(name)

    @property
    def models(self) -> list[ModelSpec]:
        return list(self._specs.values())

    @property
    def names(self) -> list[str]:
        return sorted(self._names)


def _parse_model_flag(flag: str) -> tuple[str, str]:
    """`NAME=SOURCE` names a model; a bare `SOURCE` is the default model."""
    name, sep, source = flag.partition("=")
    if sep and name and "/" not in name and not name.startswith("."):
        return name, source
    return DEFAULT_MODEL, flag


def load_registry(models_file: Path | None, model_flags: list[str]) -> ModelRegistry:
    """Build the registry: the config file, then `--model` flags, then the demo model as the
    default."""
    specs: dict[str, ModelSpec] = {}
    if models_file is not None:
        with models_file.open("rb") as f:
            table = tomllib.load(f).get("models", {})
        for name, entry in table.items():
            try:
                specs[name] = ModelSpec(name=name, **entry)
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
                )
                raise UnservedModel(f"{models_file}: model {name}: {problems}") from None
    for flag in model_flags:
        name, source = _parse_model_flag(flag)
        specs[name] = ModelSpec(name=name, source=source)
    if DEFAULT_MODEL not in specs:
        specs[DEFAULT_MODEL] = ModelSpec(
            name=DEFAULT_MODEL,
            source=str(DEMO_MODEL_DIR),
            native_size=NATIVE_SIZE,
            guidance_scale=DEMO_GUIDANCE,
            size=DEMO_SIZE,
            guidance_cutoff=DEMO_GUIDANCE_CUTOFF,
            steps=DEMO_STEPS,
            builtin=True,
        )
    default = specs[DEFAULT_MODEL]
    taken = {alias for spec in specs.values() for alias in (spec.name, *spec.aliases)}
    extra = tuple(a for a in DEFAULT_ALIASES if a not in taken)
    specs[DEFAULT_MODEL] = default.model_copy(update={"aliases": (*default.aliases, *extra)})
    # Read every model's family now: a model sdserve cannot serve stops the start, by name.
    return ModelRegistry([spec.inspected() for spec in specs.values()])
