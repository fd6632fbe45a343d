"""The model families sdserve serves, each with its defaults and rules: the one table of them.

A leaf module (no torch): the API validates requests with it, the engine loads and runs by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sdserve.canonical import SCHEDULER_NAMES, SchedulerName
from sdserve.samplers import FLOW_SCHEDULERS

FamilyName = Literal["sd1", "sd2", "sdxl", "sd3", "flux-dev", "flux-schnell"]


@dataclass(frozen=True)
class Family:
    """What a family of models brings: its defaults (a model's own config or `models.toml` may
    override them) and what it can and cannot do."""

    name: FamilyName
    title: str
    """How people call it: `Stable Diffusion XL`."""
    size: int
    """Default width and height in pixels, when the model's config does not say."""
    steps: int
    """Default denoising steps."""
    guidance_scale: float
    """Default guidance scale (FLUX.1 dev: the embedded, distilled guidance)."""
    scheduler: SchedulerName
    """Default sampler."""
    schedulers: tuple[SchedulerName, ...]
    """The samplers it can run."""
    size_step: int
    """Widths and heights must be multiples of this: the latent grid times the patch size."""
    max_size: int
    """Largest default width or height accepted, in pixels."""
    negative_prompt: bool
    """It runs true classifier-free guidance, so a negative prompt steers it."""
    compel: bool
    """compel can weight its prompts (CLIP text encoders only; not T5)."""
    guidance: bool = True
    """guidance_scale changes its images (FLUX.1 schnell takes none)."""
    guidance_cutoff: bool = False
    """A model's `guidance_cutoff` applies (diffusers' SDCFGCutoffCallback is SD 1.x/2.x's)."""


_UNET_SCHEDULERS = SCHEDULER_NAMES

FAMILIES: dict[FamilyName, Family] = {
    family.name: family
    for family in (
        Family(
            name="sd1",
            title="Stable Diffusion 1.x",
            size=512,
            steps=50,
            guidance_scale=7.5,
            scheduler="K-LMS",
            schedulers=_UNET_SCHEDULERS,
            size_step=8,
            max_size=768,
            negative_prompt=True,
            compel=True,
            guidance_cutoff=True,
        ),
        Family(
            name="sd2",
            title="Stable Diffusion 2.x",
            size=768,
            steps=50,
            guidance_scale=7.5,
            scheduler="EULER-D",
            schedulers=_UNET_SCHEDULERS,
            size_step=8,
            max_size=1024,
            negative_prompt=True,
            compel=True,
            guidance_cutoff=True,
        ),
        Family(
            name="sdxl",
            title="Stable Diffusion XL",
            size=1024,
            steps=30,
            guidance_scale=5.0,
            scheduler="EULER-D",
            schedulers=_UNET_SCHEDULERS,
            size_step=8,
            max_size=2048,
            negative_prompt=True,
            compel=True,
        ),
        Family(
            name="sd3",
            title="Stable Diffusion 3.x",
            size=1024,
            steps=28,
            guidance_scale=7.0,
            scheduler="EULER-D",
            schedulers=FLOW_SCHEDULERS,
            size_step=16,
            max_size=2048,
            negative_prompt=True,
            compel=False,
        ),
        Family(
            name="flux-dev",
            title="FLUX.1 dev",
            size=1024,
            steps=28,
            guidance_scale=3.5,
            scheduler="EULER-D",
            schedulers=FLOW_SCHEDULERS,
            size_step=16,
            max_size=2048,
            negative_prompt=False,
            compel=False,
        ),
        Family(
            name="flux-schnell",
            title="FLUX.1 schnell",
            size=1024,
            steps=4,
            guidance_scale=1.0,
            scheduler="EULER-D",
            schedulers=FLOW_SCHEDULERS,
            size_step=16,
            max_size=2048,
            negative_prompt=False,
            compel=False,
            guidance=False,
        ),
    )
}

FLOW_FAMILIES: frozenset[FamilyName] = frozenset(
    name for name, family in FAMILIES.items() if family.schedulers == FLOW_SCHEDULERS
)
"""Families trained with flow matching (their schedulers are flow schedulers)."""


def served_titles() -> str:
    """The families sdserve serves, for error messages."""
    return ", ".join(family.title for family in FAMILIES.values())
