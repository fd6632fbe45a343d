"""The samplers table: every name has an entry, and each entry agrees with diffusers."""

from __future__ import annotations

import diffusers.schedulers
import pytest
from pydantic import TypeAdapter, ValidationError

from sdserve.api.modelslab_protocol import scheduler_of
from sdserve.canonical import SCHEDULER_NAMES, SchedulerName
from sdserve.families import FAMILIES
from sdserve.samplers import FLOW_SCHEDULERS, SAMPLERS, spellings
from sdserve.samplers import Scheduler as SchedulerField


def test_every_scheduler_name_has_an_entry() -> None:
    assert tuple(SAMPLERS) == SCHEDULER_NAMES
    assert all(sampler.name == name for name, sampler in SAMPLERS.items())


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_each_class_name_is_a_diffusers_scheduler(name: SchedulerName) -> None:
    sampler = SAMPLERS[name]
    for class_name in (sampler.diffusers_class, sampler.flow_class):
        if class_name is not None:
            assert issubclass(
                getattr(diffusers.schedulers, class_name), diffusers.schedulers.SchedulerMixin
            )


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_img2img_is_what_diffusers_can_do(name: SchedulerName) -> None:
    # img2img and inpaint noise the init image to the starting timestep with `add_noise`.
    scheduler_class = getattr(diffusers.schedulers, SAMPLERS[name].diffusers_class)
    assert SAMPLERS[name].img2img == hasattr(scheduler_class, "add_noise")


def test_names_are_unique_across_spellings() -> None:
    a1111 = [sampler.a1111 for sampler in SAMPLERS.values()]
    aliases = [alias for sampler in SAMPLERS.values() for alias in sampler.aliases]
    assert len(set(a1111)) == len(a1111)
    assert not set(aliases) & set(SCHEDULER_NAMES)


def test_flow_families_run_exactly_the_flow_samplers() -> None:
    assert FLOW_SCHEDULERS == ("EULER-D",)
    for family in FAMILIES.values():
        assert set(family.schedulers) <= set(SAMPLERS)


@pytest.mark.parametrize(
    ("sent", "name"),
    [
        ("k-lms", "K-LMS"),
        ("KLMS", "K-LMS"),
        (" ddim ", "DDIM"),
        ("Euler a", "EULER-A"),  # A1111's
        ("euler_a", "EULER-A"),
        ("EulerAncestralDiscreteScheduler", "EULER-A"),  # diffusers' class
        ("EulerAncestralDiscrete", "EULER-A"),
        ("DPM++ 2M", "DPM-M"),
        ("PLMS", "PNDM"),
    ],
)
def test_a_scheduler_field_takes_every_spelling_in_any_case(sent: str, name: SchedulerName) -> None:
    assert TypeAdapter(SchedulerField).validate_python(sent) == name


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_dialect_reads_every_spelling_the_same(name: SchedulerName) -> None:
    # RunPod's and OpenAI's bodies take a Scheduler field, ModelsLab's scheduler_of.
    for spelling in spellings(SAMPLERS[name]):
        for sent in (spelling, spelling.lower(), spelling.upper()):
            assert TypeAdapter(SchedulerField).validate_python(sent) == name
            assert scheduler_of(sent) == name


def test_a_scheduler_field_names_the_choices_when_refusing() -> None:
    with pytest.raises(ValidationError, match="must name a sampler: one of DDIM, DDPM") as caught:
        TypeAdapter(SchedulerField).validate_python("UniPC")
    assert "LMSDiscreteScheduler" in str(caught.value) and "'Euler a'" in str(caught.value)
    assert scheduler_of("UniPC") is None  # ModelsLab's clients: the model's default instead
