"""What `sdserve generate` asks for: its options as the RunPod dialect's `input`, checked by the
server's own model, and the errors and results both ways of generating share."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from sdserve.api.errors import validation_errors
from sdserve.api.runpod_protocol import RunPodInput
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.inputs import open_image, prepare_mask

OPTION_OF: Mapping[str, str] = {
    "prompt": "PROMPT",
    "negative_prompt": "--negative-prompt",
    "width": "--width",
    "height": "--height",
    "init_image": "--init-image",
    "mask": "--mask",
    "guidance_scale": "--guidance",
    "num_inference_steps": "--steps",
    "num_outputs": "--num-images",
    "prompt_strength": "--strength",
    "scheduler": "--scheduler",
    "seed": "--seed",
    "lora": "--lora",
    "lora_scale": "--lora-scale",
}
"""Each request field's option: an error names what the user typed, not the wire field."""


class BadInput(Exception):
    """Options that break a rule (exit code 2); each problem names its option."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))


class GenerationFailed(Exception):
    """The images could not be made: the server is unreachable, or the job failed (exit 1)."""


@dataclass(frozen=True)
class Maker:
    """Who makes the images: the server at `url` (with `api_key`; `model` names its endpoint),
    else this process (on `device`; `model` is a SOURCE)."""

    url: str | None
    api_key: str | None
    model: str | None
    device: str | None


@dataclass(frozen=True)
class Output:
    """One generated image: its PNG (with its parameters text) and the seed that reproduces it."""

    png: bytes
    seed: int


def option_of(field: str) -> str:
    """The option of a request field, named bare (`width`) or as the server names it
    (`input.width`); a name that is no option's comes back unchanged."""
    return OPTION_OF.get(field.removeprefix("input."), field)


def checked_input(fields: Mapping[str, object]) -> RunPodInput:
    """The options given (None: not given) as a RunPod `input`, by the server's own rules."""
    try:
        return RunPodInput.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        found = validation_errors(RequestValidationError(exc.errors()))
        raise BadInput([f"{option_of(e['field'])}: {e['message']}" for e in found]) from None


def init_image_input(path: Path) -> str:
    """An image file as the `init_image` field takes it: base64 text."""
    return base64.b64encode(path.read_bytes()).decode()


def mask_input(path: Path) -> str:
    """A mask file (white repaints; black and transparent keep) as base64 text in the RunPod
    dialect's convention, where black repaints: the same mask means the same both ways."""
    try:
        mask = open_image(OPTION_OF["mask"], path.read_bytes())
    except InvalidInput as exc:
        raise BadInput([exc.message]) from None
    return base64.b64encode(prepare_mask(mask, mask.width, mask.height, invert=True)).decode()


def parse_size(text: str) -> tuple[int, int]:
    """`--size`: `WIDTHxHEIGHT` (`512x768`), or one number for a square."""
    width, cross, height = text.lower().partition("x")
    try:
        return int(width), int(height if cross else width)
    except ValueError:
        raise BadInput([f"--size: must be WIDTHxHEIGHT, e.g. 512x768 (got {text!r})"]) from None
