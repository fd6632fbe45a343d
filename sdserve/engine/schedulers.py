"""The API's scheduler names mapped to diffusers schedulers."""

from __future__ import annotations

from collections.abc import Mapping

# Imported from their modules, not the package root: mypy reads the root's lazy-import
# stubs as dummy classes, which would hide the real types.
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_dpmsolver_singlestep import DPMSolverSinglestepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusers.schedulers.scheduling_ipndm import IPNDMScheduler
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import (
    KDPM2AncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdserve.canonical import SchedulerName
from sdserve.families import FLOW_FAMILIES, FamilyName

SCHEDULERS: dict[SchedulerName, type[SchedulerMixin]] = {
    "DDIM": DDIMScheduler,
    "DDPM": DDPMScheduler,
    "DPM-M": DPMSolverMultistepScheduler,
    "DPM-S": DPMSolverSinglestepScheduler,
    "EULER-A": EulerAncestralDiscreteScheduler,
    "EULER-D": EulerDiscreteScheduler,
    "HEUN": HeunDiscreteScheduler,
    "IPNDM": IPNDMScheduler,
    "KDPM2-A": KDPM2AncestralDiscreteScheduler,
    "KDPM2-D": KDPM2DiscreteScheduler,
    "PNDM": PNDMScheduler,
    "K-LMS": LMSDiscreteScheduler,
}

FLOW_SCHEDULER_CLASSES: dict[SchedulerName, type[SchedulerMixin]] = {
    "EULER-D": FlowMatchEulerDiscreteScheduler,
}
"""The samplers of flow-matching families (SD3, FLUX), by the same names."""

_SD_DEFAULTS: dict[SchedulerName, dict[str, object]] = {
    # What SD's own scheduler configs set where diffusers' class defaults differ. A model whose
    # config is for another class lacks them, and the class defaults would clip SD's latents to
    # [-1, 1] (DDIM, DDPM) or run PNDM's Runge-Kutta warm-up (three times the model calls, and a
    # crash below 4 steps). Whatever the model's own config says still wins.
    "DDIM": {"clip_sample": False, "set_alpha_to_one": False},
    "DDPM": {"clip_sample": False},
    "PNDM": {"skip_prk_steps": True, "set_alpha_to_one": False},
}


def scheduler_classes(family: FamilyName) -> dict[SchedulerName, type[SchedulerMixin]]:
    """The scheduler classes a family's models run, by name."""
    return FLOW_SCHEDULER_CLASSES if family in FLOW_FAMILIES else SCHEDULERS


def make_scheduler(
    name: SchedulerName, base_config: Mapping[str, object], family: FamilyName = "sd1"
) -> SchedulerMixin:
    """A fresh scheduler `name` for a model of `family`, configured from its own config."""
    # A new instance every call: schedulers keep per-run state (step index, history).
    # Every diffusers scheduler is also a ConfigMixin; SchedulerMixin's type does not say so.
    config = {**_SD_DEFAULTS.get(name, {}), **base_config}
    scheduler_class = scheduler_classes(family)[name]
    scheduler: SchedulerMixin = scheduler_class.from_config(config)  # type: ignore[attr-defined]
    return scheduler


def supports_init_image(name: SchedulerName) -> bool:
    """Whether scheduler `name` can start from a noised init image (img2img and inpaint)."""
    # img2img and inpaint noise the init image to the starting timestep with `add_noise`;
    # diffusers 0.42.1 gives IPNDMScheduler none.
    return hasattr(SCHEDULERS[name], "add_noise")
