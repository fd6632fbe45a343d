"""The LoRA registry folder, and build_request refusing LoRAs that are not installed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sdserve.canonical import GenerationRequest
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.loras import UnknownLora, find_lora, list_loras
from sdserve.jobs.requests import ImageFields, build_request
from sdserve.registry import ModelSpec


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("b.safetensors", "a.safetensors", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_loras_are_the_safetensors_files_by_stem_sorted(folder: Path) -> None:
    assert list_loras(folder) == ["a", "b"]
    assert list_loras(folder / "missing") == []


def test_find_lora_gives_the_file_or_names_the_installed_ones(folder: Path) -> None:
    assert find_lora(folder, "a") == folder / "a.safetensors"
    with pytest.raises(UnknownLora, match="unknown LoRA 'c'; installed: a, b"):
        find_lora(folder, "c")
    with pytest.raises(UnknownLora, match=r"unknown LoRA '\.\./a'"):
        find_lora(folder / "sub", "../a")
    with pytest.raises(UnknownLora, match="installed: none"):
        find_lora(folder / "missing", "a")


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
