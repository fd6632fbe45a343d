"""build_request refusing LoRAs that are not installed (the folder itself: tests/test_loras.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sdserve.canonical import GenerationRequest
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.requests import ImageFields, build_request
from sdserve.registry import ModelSpec


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("b.safetensors", "a.safetensors", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def _build(**fields: object) -> GenerationRequest:
    images = ImageFields(
        init_image=None, mask=None, mask_black_repaints=False,
        names=("init_image", "mask", "width", "height"), fetch_timeout_s=1, fetch_max_bytes=1,
    )  # fmt: skip
    return asyncio.run(
        build_request(
            ModelSpec(name="default", source="/nowhere", family="sd1"),
            prompt="p",
            negative_prompt="",
            width=512,
            height=512,
            guidance_scale=7.5,
            num_inference_steps=20,
            num_outputs=1,
            prompt_strength=0.8,
            scheduler="K-LMS",
            seed=1,
            images=images,
            scheduler_field="scheduler",
            **fields,  # type: ignore[arg-type]
        )
    )


def test_build_request_refuses_a_lora_that_is_not_installed(folder: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        _build(lora="c", loras_dir=folder, lora_field="lora_model")

    assert refused.value.field == "lora_model"
    assert refused.value.rule == "unknown LoRA 'c'; installed: a, b"


def test_build_request_passes_an_installed_lora_through(folder: Path) -> None:
    request = _build(lora="b", lora_scale=0.6, loras_dir=folder)

    assert (request.lora, request.lora_scale) == ("b", 0.6)
    assert _build(loras_dir=folder).lora is None
