"""Canonical request and job types shared by every dialect, the store and the worker."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

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

TXT2IMG_ONLY_SCHEDULERS: tuple[SchedulerName, ...] = ("IPNDM",)
"""diffusers' IPNDM cannot add noise to an init image, so it serves txt2img only."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Prompt = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
"""A prompt as every dialect takes it: required, and not only whitespace."""

_SCHEDULER_ALIASES = {"KLMS": "K-LMS"}


def _scheduler_name(value: object) -> object:
    if isinstance(value, str):
        upper = value.strip().upper()
        upper = _SCHEDULER_ALIASES.get(upper, upper)
        if upper not in SCHEDULER_NAMES:
            raise ValueError(f"must be one of {', '.join(SCHEDULER_NAMES)} (got {value!r})")
        return upper
    return value


Scheduler = Annotated[SchedulerName, BeforeValidator(_scheduler_name)]
"""A scheduler name as dialects take it: case-insensitive, with KLMS for K-LMS."""

MAX_SEED = 2**63 - 1
"""Largest seed accepted; per-image seeds wrap below it so every reported seed is valid input."""


class JobStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)


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


class JobPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    execution_timeout_ms: int | None = None
    ttl_ms: int | None = None
    low_priority: bool = False


class ImageResult(BaseModel):
    """One stored output image: where its bytes live and the seed that reproduces it."""

    key: str
    seed: int
    nsfw: bool = False
    """The safety check's verdict on this image."""


class Job(BaseModel):
    id: str
    number: int = 0
    """A small integer id, unique per server, for dialects whose ids are numbers (ModelsLab)."""
    owner: str
    endpoint: str
    dialect: str = "runpod"
    """The API the job came through: its webhook payload takes that dialect's shape."""
    extra: dict[str, JsonValue] = {}
    """Dialect-specific details to answer with later (ModelsLab's track_id, ...)."""
    request: GenerationRequest
    input: dict[str, JsonValue]
    """The input as the client sent it, echoed back by /status."""
    status: JobStatus = JobStatus.IN_QUEUE
    policy: JobPolicy = JobPolicy()
    webhook: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    outputs: list[ImageResult] = []
    error: str | None = None
    attempts: int = 0
    worker_id: str | None = None
    progress_step: int = 0
    progress_total: int = 0

    @property
    def delay_ms(self) -> int:
        """Milliseconds from submission to start (or to now, while queued)."""
        end = self.started_at if self.started_at is not None else (self.finished_at or time.time())
        return max(0, int((end - self.created_at) * 1000))

    @property
    def execution_ms(self) -> int:
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0, int((end - self.started_at) * 1000))


class JobCounts(BaseModel):
    in_queue: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0


class ProgressEvent(BaseModel):
    step: int
    total: int
