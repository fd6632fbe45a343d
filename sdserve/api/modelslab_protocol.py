"""ModelsLab / stablediffusionapi wire format: request bodies and answers (API.md section 3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from sdserve.api.errors import ApiError, FieldError, field_errors
from sdserve.canonical import MAX_SEED, Prompt, SchedulerName
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.models import Job
from sdserve.samplers import SAMPLERS, sampler_named


def scheduler_of(value: object) -> SchedulerName | None:
    """The scheduler a ModelsLab `scheduler` value names; None (the model's default) for names
    sdserve does not run."""
    # ModelsLab offers samplers diffusers has and sdserve does not run (UniPC, DEIS, Karras
    # variants, ...). Its clients send them by habit, so an unknown name falls back to the
    # default rather than failing the request; `meta.scheduler` says which one ran.
    if isinstance(value, str):
        return sampler_named(value)
    return None


_YES = frozenset({"yes", "y", "true", "1", "on"})
_NO = frozenset({"no", "n", "false", "0", "off", "none"})


def _yes_no(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _YES | _NO:
        return value.strip().lower() in _YES
    raise ValueError('must be "yes" or "no"')


YesNo = Annotated[bool, BeforeValidator(_yes_no)]
"""ModelsLab's switches: "yes"/"no" (also true/false, 1/0)."""

MAX_SIDE = 1024
MAX_SHORT_SIDE = 768
"""At most 1024x768 or 768x1024 (the seed's limit); the model's own max_size applies as well."""


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


class ModelsLabRequest(BaseModel):
    """The body of text2img, img2img, inpaint and dreambooth calls (v3, v4 and v6 alike)."""

    # ModelsLab clients send many fields sdserve has no use for (upscale,
    # embeddings_model, vae, ...): they are ignored, not refused, so those clients work unchanged.
    model_config = ConfigDict(extra="ignore")

    key: str | int | None = None
    model_id: str | None = None
    """A model name or alias of the registry; absent: the default model."""
    prompt: Prompt
    negative_prompt: str = ""
    width: int | None = Field(default=None, le=MAX_SIDE)
    """None: the model's default size, as for every field below that is None."""
    height: int | None = Field(default=None, le=MAX_SIDE)
    samples: int = Field(default=1, ge=1, le=4)
    num_inference_steps: int | None = Field(default=None, ge=1, le=50)
    guidance_scale: float | None = Field(default=None, ge=1, le=20)
    """None: the model's own default (its family's, or its `models.toml` entry's)."""
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    safety_checker: YesNo = False
    """Blank the images the safety check flags (default no: the operator owns the model)."""
    enhance_prompt: YesNo = True
    """Append the server's `enhance_prompt_suffix` (ModelsLab's default is yes)."""
    prompt_strength: float | None = Field(default=None, ge=0, le=1)
    strength: float | None = Field(default=None, ge=0, le=1)
    """v6's name for prompt_strength; prompt_strength wins when both are given."""
    init_image: str | None = None
    mask_image: str | None = None
    """White pixels are repainted, black ones kept (diffusers' convention, which ModelsLab uses)."""
    base64: YesNo = False
    """Answer with base64 PNGs instead of URLs."""
    webhook: AnyHttpUrl | None = None
    track_id: int | str | None = None
    scheduler: Annotated[SchedulerName | None, BeforeValidator(scheduler_of)] = None
    """None (also for a name sdserve does not run): the model's default."""
    lora_model: str | None = None
    """The name of an installed LoRA (one per request)."""
    lora_strength: float = Field(default=1.0, ge=0, le=2)

    @field_validator("lora_model")
    @classmethod
    def _one_lora(cls, value: str | None) -> str | None:
        if value is not None and "," in value:
            raise ValueError(f"one LoRA per request is supported (got {value!r})")
        return value.strip() if value is not None else None

    @model_validator(mode="before")
    @classmethod
    def _drop_empty(cls, data: object) -> object:
        # ModelsLab's own examples send `"seed": null`, `"webhook": null`, `"init_image": ""`:
        # an empty value means "not given", so the default applies.
        if not isinstance(data, dict):
            return data
        return {name: value for name, value in data.items() if name == "prompt" or _given(value)}

    @property
    def effective_strength(self) -> float:
        """How far img2img and inpainting depart from init_image (0.8 unless given)."""
        for value in (self.prompt_strength, self.strength):
            if value is not None:
                return value
        return 0.8

    def check_dimensions(self, default_size: int) -> None:
        """At most 1024x768 or 768x1024: both sides over 768 is too large, except on models made
        for 1024x1024 (`default_size`: SDXL, SD3, FLUX), which ModelsLab serves at that size."""
        if self.width is None or self.height is None or default_size >= MAX_SIDE:
            return
        if min(self.width, self.height) > MAX_SHORT_SIDE:
            field = "width" if self.width <= self.height else "height"
            raise InvalidInput(
                field,
                f"must be at most {MAX_SHORT_SIDE} when the other side is over {MAX_SHORT_SIDE}"
                f" (at most 1024x768 or 768x1024; got {self.width}x{self.height})",
            )


class ModelsLabFetch(BaseModel):
    """The body of fetch calls: the key, and the id when it is not in the path."""

    model_config = ConfigDict(extra="ignore")

    key: str | int | None = None
    request_id: int | None = None


_ANSWER = ConfigDict(extra="forbid")
"""Answers are declared whole: a key the model lacks is a server bug, not something to drop."""
YesNoText = Literal["yes", "no"]


class ModelsLabError(BaseModel):
    """ModelsLab's error answer: at HTTP 200 for bad input (as ModelsLab answers it), at its
    own status otherwise (401, 404, 409, 413, 429)."""

    model_config = _ANSWER

    status: Literal["error"]
    message: str
    """What went wrong, for a person to read."""
    errors: list[FieldError] | None = None
    """Each bad field with its rule (bad input only)."""


def render_error(error: ApiError) -> JSONResponse:
    """ModelsLab's error shape; bad input answers HTTP 200 as ModelsLab does, 401 stays 401."""
    body = ModelsLabError(status="error", message=error.message, errors=field_errors(error))
    status = 200 if error.status == 400 else error.status
    return JSONResponse(body.model_dump(exclude_none=True), status, headers=error.headers)


class ModelsLabMeta(BaseModel):
    """The parameters the images were made with."""

    model_config = _ANSWER

    H: int
    W: int
    guidance_scale: float
    model: str
    n_samples: int
    negative_prompt: str
    prompt: str
    safety_checker: YesNoText
    seed: int
    steps: int
    scheduler: str
    """The diffusers class of the sampler that ran."""
    enhance_prompt: YesNoText
    base64: YesNoText
    file_prefix: str
    strength: float | None = None
    """With an init image only."""
    warnings: list[str] | None = None
    """Beyond ModelsLab's shape, only when there are some: what the request will not do though
    it was accepted (a prompt the demo model knows no word of)."""


class ModelsLabSuccess(BaseModel):
    """A finished job: its images (URLs or base64) and their parameters."""

    model_config = _ANSWER

    status: Literal["success"]
    generationTime: float
    """Seconds the images took."""
    id: int
    output: list[str]
    nsfw_content_detected: list[bool]
    meta: ModelsLabMeta
    track_id: int | str | None = None


class ModelsLabProcessing(BaseModel):
    """A job not done yet: where to fetch it, and the URLs its images will have."""

    model_config = _ANSWER

    status: Literal["processing"]
    id: int
    eta: float
    """Seconds until it is likely done."""
    message: str
    fetch_result: str
    future_links: list[str]
    meta: ModelsLabMeta
    track_id: int | str | None = None


class ModelsLabFailure(BaseModel):
    """A job that ended without images, and why."""

    model_config = _ANSWER

    status: Literal["error"]
    id: int
    message: str
    track_id: int | str | None = None


Answer = ModelsLabSuccess | ModelsLabProcessing | ModelsLabFailure | ModelsLabError
"""Every HTTP 200 answer of a generation or a fetch: its job's success, progress or failure,
or, for bad input, `{"status": "error", "message", "errors"}` without an id. (Not tagged by
`status`: a failed job and bad input both answer "error".)"""


def render_meta(job: Job) -> dict[str, Any]:
    """The `meta` object: the parameters the images were made with."""
    request = job.request
    meta: dict[str, Any] = {
        "H": request.height,
        "W": request.width,
        "guidance_scale": request.guidance_scale,
        "model": request.model,
        "n_samples": request.num_outputs,
        "negative_prompt": request.negative_prompt,
        "prompt": request.prompt,
        "safety_checker": "yes" if request.blank_nsfw else "no",
        "seed": request.seed,
        "steps": request.num_inference_steps,
        "scheduler": SAMPLERS[request.scheduler].diffusers_class,
        "enhance_prompt": "yes" if job.extra.get("enhance_prompt") else "no",
        "base64": "yes" if job.extra.get("base64") else "no",
        "file_prefix": job.id,
    }
    if request.init_image is not None:
        meta["strength"] = request.prompt_strength
    if job.warnings:
        meta["warnings"] = job.warnings
    return meta


def render_success(job: Job, output: list[str]) -> dict[str, Any]:
    """A finished job: its images (URLs or base64) and their parameters."""
    return {
        "status": "success",
        "generationTime": job.execution_ms / 1000,
        "id": job.number,
        "output": output,
        "nsfw_content_detected": [result.nsfw for result in job.outputs],
        "meta": render_meta(job),
        **_track_id(job),
    }


def render_processing(
    job: Job, eta_s: float, fetch_url: str, future_links: list[str]
) -> dict[str, Any]:
    """A job not done yet: where to fetch it, and the URLs its images will have."""
    return {
        "status": "processing",
        "id": job.number,
        "eta": round(eta_s, 1),
        "message": "Your request is being processed; fetch the result from fetch_result"
        " once eta seconds have passed.",
        "fetch_result": fetch_url,
        "future_links": future_links,
        "meta": render_meta(job),
        **_track_id(job),
    }


def render_failure(job: Job) -> dict[str, Any]:
    """A job that ended without images: why."""
    reason = job.error or f"the request was {job.status.value.lower().replace('_', ' ')}"
    return {"status": "error", "id": job.number, "message": reason, **_track_id(job)}


def _track_id(job: Job) -> dict[str, Any]:
    track_id = job.extra.get("track_id")
    return {} if track_id is None else {"track_id": track_id}
