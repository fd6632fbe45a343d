"""diffusers schedulers built from the samplers table (`sdserve.samplers`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import diffusers.schedulers
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdserve.canonical import SchedulerName
from sdserve.families import FLOW_FAMILIES, FamilyName
from sdserve.samplers import SAMPLERS


def _diffusers_class(class_name: str) -> type[SchedulerMixin]:
    scheduler_class = getattr(diffusers.schedulers, class_name)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise TypeError(f"diffusers.schedulers.{class_name} is not a scheduler")
    return scheduler_class


_LMS_COEFFICIENTS_KEPT = 4096
"""Enough for every step of ~40 different schedules (a schedule of n steps has < 4n)."""
_lms_coefficients: OrderedDict[tuple[int, int, tuple[float, ...]], float] = OrderedDict()
"""K-LMS coefficients by (order, which one, the sigmas they span), the most recent last."""
_lms_lock = threading.Lock()


class RememberingLMSScheduler(LMSDiscreteScheduler):
    """diffusers' K-LMS, remembering its multistep coefficients across runs.

    diffusers integrates each coefficient numerically (scipy's `quad` over a Python product
    of tensor scalars) at every step: ~0.8 ms each, up to 4 a step, which is 5-10 % of a small
    model's step on a CPU and more of a fast GPU's. A coefficient depends only on the order,
    which coefficient, and the sigmas it spans, so the value computed once for a schedule
    is the value every later run of that schedule gets, to the bit."""

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        spanned = tuple(self.sigmas[t - order + 1 : t + 2].tolist())
        key = (order, current_order, spanned)
        with _lms_lock:
            known = _lms_coefficients.get(key)
            if known is not None:
                _lms_coefficients.move_to_end(key)
                return known
        value: float = super().get_lms_coefficient(order, t, current_order)
        with _lms_lock:
            _lms_coefficients[key] = value
            if len(_lms_coefficients) > _LMS_COEFFICIENTS_KEPT:
                _lms_coefficients.popitem(last=False)
        return value


SCHEDULERS: dict[SchedulerName, type[SchedulerMixin]] = {
    name: _diffusers_class(sampler.diffusers_class) for name, sampler in SAMPLERS.items()
} | {"K-LMS": RememberingLMSScheduler}
"""The scheduler classes of noise-predicting (UNet) families, by name."""

FLOW_SCHEDULER_CLASSES: dict[SchedulerName, type[SchedulerMixin]] = {
    name: _diffusers_class(sampler.flow_class)
    for name, sampler in SAMPLERS.items()
    if sampler.flow_class is not None
}
"""The samplers of flow-matching families (SD3, FLUX), by the same names."""


def scheduler_classes(family: FamilyName) -> dict[SchedulerName, type[SchedulerMixin]]:
    """The scheduler classes a family's models run, by name."""
    return FLOW_SCHEDULER_CLASSES if family in FLOW_FAMILIES else SCHEDULERS


def make_scheduler(
    name: SchedulerName, base_config: Mapping[str, object], family: FamilyName = "sd1"
) -> SchedulerMixin:
    """A fresh scheduler `name` for a model of `family`, configured from its own config."""
    # A new instance every call: schedulers keep per-run state (step index, history).
    # Every diffusers scheduler is also a ConfigMixin; SchedulerMixin's type does not say so.
    config = {**SAMPLERS[name].sd_config, **base_config}
    scheduler_class = scheduler_classes(family)[name]
    scheduler: SchedulerMixin = scheduler_class.from_config(config)  # type: ignore[attr-defined]
    return scheduler


def supports_init_image(name: SchedulerName) -> bool:
    """Whether scheduler `name` can start from a noised init image (img2img and inpaint)."""
    return SAMPLERS[name].img2img
