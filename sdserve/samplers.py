"""The samplers sdserve runs: the one table of their names, diffusers classes and abilities.

A leaf module (no torch, no diffusers): the API parses and answers scheduler names with it, the
job core checks requests by it, the engine builds diffusers schedulers from it and the worker
writes A1111's name into PNG metadata from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BeforeValidator

from sdserve.canonical import SCHEDULER_NAMES, SchedulerName


@dataclass(frozen=True)
class Sampler:
    """One sampler under its sdserve name (the RunPod worker's: `K-LMS`)."""

    name: SchedulerName
    diffusers_class: str
    """diffusers' scheduler class for noise-predicting (UNet) families; ModelsLab's name for it."""
    a1111: str
    """A1111's name (`Euler a`), written into PNG metadata and accepted from ModelsLab clients."""
    flow_class: str | None = None
    """diffusers' class for flow-matching families (SD3, FLUX); None: they cannot run it."""
    aliases: tuple[str, ...] = ()
    """Other names clients send for it (upper case)."""
    img2img: bool = True
    """It can start from a noised init image (img2img, inpaint): its class has `add_noise`."""
    sd_config: Mapping[str, object] = field(default_factory=dict)
    """Settings SD's own scheduler configs give it where diffusers' class defaults differ."""


_SAMPLER_LIST = (
    # sd_config: a model whose scheduler config is for another class lacks these, and the class
    # defaults would clip SD's latents to [-1, 1] (DDIM, DDPM) or run PNDM's Runge-Kutta warm-up
    # (three times the model calls, and a crash below 4 steps). The model's own config still wins.
    Sampler(
        "DDIM", "DDIMScheduler", "DDIM", sd_config={"clip_sample": False, "set_alpha_to_one": False}
    ),
    Sampler("DDPM", "DDPMScheduler", "DDPM", sd_config={"clip_sample": False}),
    Sampler("DPM-M", "DPMSolverMultistepScheduler", "DPM++ 2M"),
    Sampler("DPM-S", "DPMSolverSinglestepScheduler", "DPM++ SDE"),
    Sampler("EULER-A", "EulerAncestralDiscreteScheduler", "Euler a"),
    Sampler(
        "EULER-D", "EulerDiscreteScheduler", "Euler", flow_class="FlowMatchEulerDiscreteScheduler"
    ),
    Sampler("HEUN", "HeunDiscreteScheduler", "Heun"),
    # diffusers 0.42.1 gives IPNDMScheduler no `add_noise`, so it serves txt2img only.
    Sampler("IPNDM", "IPNDMScheduler", "IPNDM", img2img=False),
    Sampler("KDPM2-A", "KDPM2AncestralDiscreteScheduler", "DPM2 a"),
    Sampler("KDPM2-D", "KDPM2DiscreteScheduler", "DPM2"),
    Sampler(
        "PNDM",
        "PNDMScheduler",
        "PLMS",
        sd_config={"skip_prk_steps": True, "set_alpha_to_one": False},
    ),
    Sampler("K-LMS", "LMSDiscreteScheduler", "LMS", aliases=("KLMS",)),
)

SAMPLERS: Mapping[SchedulerName, Sampler] = {sampler.name: sampler for sampler in _SAMPLER_LIST}
"""Every sampler by its sdserve name, in SchedulerName's order."""

FLOW_SCHEDULERS: tuple[SchedulerName, ...] = tuple(
    name for name, sampler in SAMPLERS.items() if sampler.flow_class is not None
)
"""The samplers flow-matching models run; the others integrate a noise schedule they lack."""


def squash(name: str) -> str:
    """A spelling reduced to what tells samplers apart: `Euler a`, `EULER-A` and `euler_a` meet."""
    return re.sub(r"[^a-z0-9+]", "", name.lower())


def spellings(sampler: Sampler) -> tuple[str, ...]:
    """Every name a client may send for `sampler`: sdserve's (the RunPod worker's), its
    aliases, diffusers' class with or without `Scheduler`, and A1111's."""
    cls = sampler.diffusers_class
    return (sampler.name, *sampler.aliases, cls, cls.removesuffix("Scheduler"), sampler.a1111)


def _lookup() -> dict[str, SchedulerName]:
    found: dict[str, SchedulerName] = {}
    for name, sampler in SAMPLERS.items():
        for spelling in spellings(sampler):
            known = found.setdefault(squash(spelling), name)
            if known != name:
                raise AssertionError(f"{spelling!r} would name both {known} and {name}")
    return found


_BY_SPELLING = _lookup()


def sampler_named(value: str) -> SchedulerName | None:
    """The sampler a client's spelling names (case, spaces, `-` and `_` aside); None if none."""
    return _BY_SPELLING.get(squash(value))


def _scheduler_name(value: object) -> object:
    if isinstance(value, str):
        name = sampler_named(value)
        if name is None:
            raise ValueError(
                f"must name a sampler: one of {', '.join(SCHEDULER_NAMES)}, or its diffusers"
                f" class (LMSDiscreteScheduler) or A1111 name ('Euler a') (got {value!r})"
            )
        return name
    return value


Scheduler = Annotated[SchedulerName, BeforeValidator(_scheduler_name)]
"""A scheduler name as every dialect takes it: any of its `spellings`, in any case."""
