"""Canonical request types every layer shares: the request, its result, and the names it takes.

How a scheduler name is parsed, and what each one is, lives in `sdserve.samplers`.

A leaf module: it imports nothing from sdserve, so the API, the job core and the engine can all
depend on it without depending on each other.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SchedulerName = Literal[
    "DDIM",
    "DDPM",
    "DPM-M",
    "DPM-S",
    "EULER-A",
    "EULER-D",
    "HEUN",
    "IPNDM",
    "KDPM2-A",
    "KDPM2-D",
    "PNDM",
    "K-LMS",
]
SCHEDULER_NAMES: tuple[SchedulerName, ...] = SchedulerName.__args__  # type: ignore[attr-defined]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Prompt = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
"""A prompt as every dialect takes it: required, and not only whitespace."""

MAX_SEED = 2**63 - 1
"""Largest seed accepted; per-image seeds wrap below it so every reported seed is valid input."""


class GenerationRequest(BaseModel):
    """One validated image generation, independent of the dialect that asked for it."""

    # Images travel as base64 in JSON (the job store) and as raw bytes in Python.
    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    model: str
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    init_image: bytes | None = None
    """PNG bytes, already resized to width x height."""
    mask: bytes | None = None
    """PNG bytes (mode L, width x height) in diffusers' convention: white is repainted."""
    guidance_scale: float
    num_inference_steps: int
    num_outputs: int
    prompt_strength: float
    scheduler: SchedulerName
    seed: int = Field(ge=0, le=MAX_SEED)
    use_compel: bool = False
    """Parse prompts with compel's weighting syntax (`(word)1.3`, `word++`)."""
    lora: str | None = None
    """Name of an installed LoRA applied to this request only."""
    lora_scale: float = 1.0
    blank_nsfw: bool = False
    """Replace images the safety check flags with black ones."""

    def image_seed(self, index: int) -> int:
        """The seed of output image `index`; sending it back with num_outputs=1 reproduces it."""
        return (self.seed + index) % (MAX_SEED + 1)

    def batch_key(self) -> str | None:
        """What a request must share with others to run in one pipeline call with them (their
        prompts, negative prompts and seeds may differ), or None: never batched with other
        requests. Only plain text-to-image batches across requests. The image count is shared
        too, so that a batch's images are known when its jobs are claimed: a worker never
        takes more images into one call than its `max_batch`."""
        if self.init_image is not None or self.mask is not None or self.use_compel:
            return None
        shared = (
            self.model, self.width, self.height, self.num_inference_steps, self.scheduler,
            self.guidance_scale, self.lora, self.lora_scale if self.lora else None,
            self.num_outputs,
        )  # fmt: skip
        return json.dumps(shared)


class ImageResult(BaseModel):
    """One stored output image: where its bytes live and the seed that reproduces it."""

    key: str
    seed: int
    nsfw: bool = False
    """The safety check's verdict on this image."""
