"""The NSFW check: the model's own safety checker when it ships one, else NudeNet (offline)."""

from __future__ import annotations

import functools
import logging
from typing import Protocol, TypedDict

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion import safety_checker as diffusers_safety_checker
from PIL import Image

from sdserve.engine.pipelines import PipelineSet

NUDENET_CLASSES = frozenset(
    {
        "ANUS_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
    }
)
"""NudeNet's labels that make an image NSFW; the others (faces, covered parts, feet) do not."""
NUDENET_MIN_SCORE = 0.5
"""The confidence from which a NudeNet detection of those labels counts."""


_Detection = TypedDict("_Detection", {"class": str, "score": float, "box": list[int]})


class _Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[_Detection]: ...


def is_nsfw(pipes: PipelineSet, image: Image.Image) -> bool:
    """The safety verdict on one output image."""
    if pipes.safety_checker is not None and pipes.feature_extractor is not None:
        return _model_verdict(pipes, image)
    return _nudenet_verdict(image)


def blanked(image: Image.Image) -> Image.Image:
    """A black image of the same size and mode, to return in place of a flagged one."""
    return Image.new(image.mode, image.size)


def _model_verdict(pipes: PipelineSet, image: Image.Image) -> bool:
    checker = pipes.safety_checker
    assert checker is not None and pipes.feature_extractor is not None
    # The checker blacks out what it flags and says so in a warning; sdserve blanks by itself,
    # only when asked, so it hands the checker a stand-in and keeps the log for its own words.
    logging.getLogger(diffusers_safety_checker.__name__).setLevel(logging.ERROR)
    pixels = pipes.feature_extractor(image, return_tensors="pt").pixel_values
    clip_input = pixels.to(device=pipes.device, dtype=checker.dtype)
    with torch.no_grad():
        _, flags = checker(images=np.zeros((1, 1, 1, 3)), clip_input=clip_input)
    return bool(flags[0])


def _nudenet_verdict(image: Image.Image) -> bool:
    # NudeNet reads arrays as OpenCV does (BGR); RGBA is the layout it converts correctly.
    detections = _nudenet().detect(np.asarray(image.convert("RGBA")))
    return any(
        d["class"] in NUDENET_CLASSES and d["score"] >= NUDENET_MIN_SCORE for d in detections
    )


@functools.cache
def _nudenet() -> _Detector:
    """NudeNet's detector, loaded once per process from the ONNX model its wheel ships."""
    from nudenet import NudeDetector

    detector: _Detector = NudeDetector()
    return detector
