"""Rules every dialect's request obeys: samplers from the samplers table, and the bounds on
prompts compel parses."""

from __future__ import annotations

import pytest

from sdserve.canonical import SCHEDULER_NAMES, SchedulerName
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.requests import (
    MAX_COMPEL_NESTING,
    MAX_COMPEL_PARTS,
    check_compel_prompt,
    check_scheduler,
)
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


@pytest.mark.parametrize(
    "prompt",
    [
        "a (red)1.5 circle, blue++ background, (blurry)0.5",
        "a well-known black-and-white photo - taken in 1950",
        '("a red circle", "a blue square").blend(0.7, 0.3)',
        "(" * MAX_COMPEL_NESTING + "red" + ")" * MAX_COMPEL_NESTING,
        "\\(" * 20 + "escaped parentheses are text" + "\\)" * 20,
        "word- " * MAX_COMPEL_PARTS,
    ],
)
def test_a_prompt_compel_parses_in_time_passes(prompt: str) -> None:
    check_compel_prompt("prompt", prompt)


@pytest.mark.parametrize(
    ("prompt", "rule"),
    [
        (
            "(" * (MAX_COMPEL_NESTING + 1) + "a" + ")" * (MAX_COMPEL_NESTING + 1),
            f"must nest parentheses at most {MAX_COMPEL_NESTING} deep when compel weights it"
            f" (got {MAX_COMPEL_NESTING + 1})",
        ),
        ("cat- dog " * (MAX_COMPEL_PARTS + 1), f"(got {MAX_COMPEL_PARTS + 1}; each '('"),
        ("(a)0.5 " * (MAX_COMPEL_PARTS + 1), "weighted or combined parts"),
        (
            "(" + ", ".join(["a"] * (MAX_COMPEL_PARTS + 1)) + ").and()",
            f"at most {MAX_COMPEL_PARTS}",
        ),
    ],
)
def test_a_prompt_costly_to_weight_is_refused_naming_the_rule(prompt: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_compel_prompt("input.prompt", prompt)
    assert refused.value.field == "input.prompt"
    assert rule in refused.value.rule
