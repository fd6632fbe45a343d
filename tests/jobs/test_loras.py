"""build_request refusing LoRAs that are not installed (the folder itself: tests/test_loras.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sdserve.canonical import GenerationRequest
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.requests import InputLimits, RequestDraft, build_request
from sdserve.registry import ModelSpec


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("b.safetensors", "a.safetensors", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def _build(
    loras_dir: Path, fields: dict[str, str] | None = None, **given: object
) -> GenerationRequest:
    draft = RequestDraft.model_validate({"model": "default", "prompt": "p", **given})
    limits = InputLimits(fetch_timeout_s=1, fetch_max_bytes=1, loras_dir=loras_dir)
    spec = ModelSpec(name="default", source="/nowhere", family="sd1")
    return asyncio.run(build_request(spec, draft, fields or {}, limits))


def test_build_request_refuses_a_lora_that_is_not_installed(folder: Path) -> None:
    with pytest.raises(InvalidInput) as refused:
        _build(folder, {"lora": "lora_model"}, lora="c")

    assert refused.value.field == "lora_model"
    assert refused.value.rule == "unknown LoRA 'c'; installed: a, b"


def test_build_request_passes_an_installed_lora_through(folder: Path) -> None:
    request = _build(folder, lora="b", lora_scale=0.6)

    assert (request.lora, request.lora_scale) == ("b", 0.6)
    assert _build(folder).lora is None
