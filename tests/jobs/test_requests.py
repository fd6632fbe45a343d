"""Sampler rules every dialect's request obeys, read from the samplers table."""

from __future__ import annotations

import pytest

from sdserve.canonical import SCHEDULER_NAMES, SchedulerName
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.requests import check_scheduler
from sdserve.registry import ModelSpec

SD = ModelSpec(name="default", source="/nowhere", family="sd1")
FLUX = ModelSpec(name="flux", source="/nowhere", family="flux-dev")


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_sampler_serves_txt2img_and_all_but_ipndm_start_from_an_image(
    name: SchedulerName,
) -> None:
    check_scheduler("scheduler", name, SD, init=False)
    if name == "IPNDM":
        with pytest.raises(InvalidInput) as refused:
            check_scheduler("input.scheduler", name, SD, init=True)
        assert refused.value.field == "input.scheduler"
        assert refused.value.rule == (
            "IPNDM cannot start from an init image; choose another, e.g. K-LMS"
        )
    else:
        check_scheduler("scheduler", name, SD, init=True)


def test_a_flow_model_runs_only_the_flow_samplers() -> None:
    check_scheduler("scheduler", "EULER-D", FLUX, init=True)
    with pytest.raises(InvalidInput, match=r"runs EULER-D only; DDIM has no equivalent"):
        check_scheduler("scheduler", "DDIM", FLUX, init=False)
