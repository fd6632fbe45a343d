"""The model registry: endpoint names and aliases mapped to model sources (no torch here)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdserve.demo import DEMO_GUIDANCE, DEMO_MODEL_DIR, NATIVE_SIZE

DEFAULT_MODEL = "default"
DEFAULT_ALIASES = ("stable-diffusion-v1", "stabilityai/stable-diffusion-2-1")
"""Names the hosted APIs' own examples use; they answer with the default model."""

SourceKind = Literal["folder", "single_file", "hub"]


class ModelSpec(BaseModel):
    """One servable model."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    """A Hugging Face hub id, a local diffusers folder, or a single-file .safetensors/.ckpt."""
    aliases: tuple[str, ...] = ()
    config: str | None = None
    """For single-file checkpoints: a diffusers folder or hub id whose configs describe it."""
    max_size: int = Field(default=768, ge=128, le=4096)
    """Largest width or height accepted, in pixels."""
    price: float = Field(default=0.0, ge=0)
    """Cost reported per generated image (DeepInfra's `inference_status.cost`), default 0."""
    guidance_scale: float = Field(default=7.5, ge=1, le=20)
    """The guidance scale of requests that give none."""
    native_size: int | None = Field(default=None, ge=64, le=4096)
    """The size the model was trained at, when smaller than requests may be: images are made
    at about this size (the request's aspect ratio kept) and upscaled to the requested one."""
    builtin: bool = False
    """True for the demo model shipped in the package, the default when none is configured."""

    @property
    def kind(self) -> SourceKind:
        if self.source.endswith((".safetensors", ".ckpt")):
            return "single_file"
        if Path(self.source).expanduser().is_dir() or self.source.startswith((".", "/", "~")):
            return "folder"
        return "hub"


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
            specs[name] = ModelSpec(name=name, **entry)
    for flag in model_flags:
        name, source = _parse_model_flag(flag)
        specs[name] = ModelSpec(name=name, source=source)
    if DEFAULT_MODEL not in specs:
        specs[DEFAULT_MODEL] = ModelSpec(
            name=DEFAULT_MODEL,
            source=str(DEMO_MODEL_DIR),
            native_size=NATIVE_SIZE,
            guidance_scale=DEMO_GUIDANCE,
            builtin=True,
        )
    default = specs[DEFAULT_MODEL]
    taken = {alias for spec in specs.values() for alias in (spec.name, *spec.aliases)}
    extra = tuple(a for a in DEFAULT_ALIASES if a not in taken)
    specs[DEFAULT_MODEL] = default.model_copy(update={"aliases": (*default.aliases, *extra)})
    return ModelRegistry(list(specs.values()))
