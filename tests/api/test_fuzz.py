"""Bounded fuzzing of /run on loopback: any input gets a 200 or a 400, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = [
    "prompt", "negative_prompt", "width", "height", "init_image", "mask", "guidance_scale",
    "num_inference_steps", "num_outputs", "prompt_strength", "scheduler", "seed",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["512", "K-LMS", "euler-a", "data:image/png;base64,", "http://", "128"])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
inputs = st.dictionaries(st.sampled_from([*FIELDS, "unknown"]), values, max_size=6)
bodies = st.one_of(
    st.fixed_dictionaries({"input": inputs}),
    st.fixed_dictionaries(
        {"input": inputs},
        optional={
            "policy": st.dictionaries(
                st.sampled_from(["ttl", "executionTimeout", "lowPriority", "x"]), values
            ),
            "webhook": values,
        },
    ),
    values,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_run_never_answers_500(client: httpx.Client, body: Any) -> None:
    r = client.post("/v2/default/run", json=body)
    assert r.status_code in (200, 400), (r.status_code, r.text)
    answer = r.json()
    if r.status_code == 400:
        assert answer["error"] and answer["errors"][0]["field"]
    else:
        client.post(f"/v2/default/cancel/{answer['id']}")
