"""Jobs for the store tests."""

from __future__ import annotations

import time

from sdserve.canonical import GenerationRequest
from sdserve.jobs.models import Job, JobPolicy


def make_job(job_id: str, owner: str = "alice", endpoint: str = "default", **policy: object) -> Job:
    request = GenerationRequest(
        model=endpoint, prompt="p", width=128, height=128, guidance_scale=7.5,
        num_inference_steps=2, num_outputs=1, prompt_strength=0.8, scheduler="K-LMS", seed=1,
    )  # fmt: skip
    return Job(
        id=job_id, owner=owner, endpoint=endpoint, request=request, input={"prompt": "p"},
        policy=JobPolicy.model_validate(policy), webhook="http://127.0.0.1:1/hook",
        created_at=time.time(),
    )  # fmt: skip
