"""Speed options: each takes effect and keeps the eager image (to within a few levels of 255)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from sdserve.canonical import GenerationRequest
from sdserve.engine.cache import PipelineCache
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.pipelines import PipelineSet, load_pipelines
from sdserve.engine.speed import SpeedOptions, apply_speed_options, warm_up
from sdserve.registry import ModelSpec

from .helpers import ignore_steps, make_request, pixels

TOLERANCE = 3
"""Levels of 255 an image may differ from the eager one: measured at most 1 (channels-last,
compile: convolutions and fused kernels sum in another order; fused QKV: 0), so 3 is margin."""

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
"""The compile test's requests: the smallest work, as on CPU the compiling is what takes time."""


def _image(
    pipes: PipelineSet, request: GenerationRequest, loras: Path | None = None
) -> NDArray[np.float64]:
    options = EngineOptions(loras_dir=loras, nsfw_check=False)
    [result] = generate(pipes, request, ignore_steps, options)
    return pixels(result.image)


def _fresh(spec: ModelSpec, options: SpeedOptions) -> PipelineSet:
    pipes = load_pipelines(spec, "cpu")  # the shared `pipes` fixture stays eager
    apply_speed_options(pipes, options)
    return pipes


def _within_tolerance(image: NDArray[np.float64], eager: NDArray[np.float64]) -> bool:
    return float(np.abs(image - eager).max()) <= TOLERANCE


def _is_fused(pipes: PipelineSet) -> bool:
    processors = pipes.txt2img.unet.attn_processors.values()
    return all(type(processor).__name__.startswith("Fused") for processor in processors)


def _graphs_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_channels_last_keeps_the_image(pipes: PipelineSet, tiny_spec: ModelSpec) -> None:
    request = make_request()
    fast = _fresh(tiny_spec, SpeedOptions(channels_last=True))
    for module in (fast.txt2img.unet.conv_in, fast.txt2img.vae.decoder.conv_in):
        assert module.weight.is_contiguous(memory_format=torch.channels_last)
        assert not module.weight.is_contiguous()
    assert _within_tolerance(_image(fast, request), _image(pipes, request))


def test_fused_qkv_keeps_the_image(pipes: PipelineSet, tiny_spec: ModelSpec) -> None:
    request = make_request()
    fast = _fresh(tiny_spec, SpeedOptions(fuse_qkv=True))
    assert _is_fused(fast) and not _is_fused(pipes)
    assert any(hasattr(module, "to_qkv") for module in fast.txt2img.vae.modules())
    assert _within_tolerance(_image(fast, request), _image(pipes, request))


def test_a_lora_acts_on_a_fused_model_as_on_an_unfused_one(
    pipes: PipelineSet, tiny_spec: ModelSpec, loras_dir: Path
) -> None:
    # Adapters sit on the separate query, key and value projections a fused model skips.
    request = make_request(lora="ink")
    fast = _fresh(tiny_spec, SpeedOptions(fuse_qkv=True))
    with_lora = _image(fast, request, loras_dir)
    assert _within_tolerance(with_lora, _image(pipes, request, loras_dir))
    plain = make_request()
    assert np.abs(with_lora - _image(pipes, plain)).mean() > 1.0  # the LoRA did act
    assert _is_fused(fast)  # fused again for the next request
    assert _within_tolerance(_image(fast, plain), _image(pipes, plain))


# Inductor caches what it compiled (TORCHINDUCTOR_CACHE_DIR, /tmp by default): ~40 s with the
# cache warm; with it empty, several minutes on 2 busy cores (C++ kernels built with gcc).
@pytest.mark.timeout(900)
def test_compile_keeps_the_image_and_warm_up_spares_the_first_requests(
    pipes: PipelineSet, tiny_spec: ModelSpec, caplog: pytest.LogCaptureFixture
) -> None:
    fast = _fresh(tiny_spec, SpeedOptions(compile=True))
    before = _graphs_compiled()
    with caplog.at_level(logging.INFO, logger="sdserve.engine.speed"):
        warm_up(fast, 64, 64)
    assert _graphs_compiled() > before  # inductor compiled graphs
    assert "compiled tiny in" in caplog.text
    warmed = _graphs_compiled()
    for images in (1, 3):  # the warm-up's graphs serve every batch size
        request = make_request(**SMALL, num_outputs=images)
        assert _within_tolerance(_image_batch(fast, request), _image_batch(pipes, request))
    assert _graphs_compiled() == warmed


def _image_batch(pipes: PipelineSet, request: GenerationRequest) -> NDArray[np.float64]:
    results = generate(pipes, request, ignore_steps, EngineOptions(nsfw_check=False))
    return np.stack([pixels(result.image) for result in results])


def test_warm_up_does_nothing_for_an_eager_model(pipes: PipelineSet) -> None:
    before = _graphs_compiled()
    warm_up(pipes)
    assert _graphs_compiled() == before and not pipes.compiled


def test_the_servers_options_reach_every_model_and_a_models_own_add_to_them(
    tiny_model: Path,
) -> None:
    cache = PipelineCache("cpu", speed=SpeedOptions(fuse_qkv=True))
    plain = cache.get(ModelSpec(name="plain", source=str(tiny_model)))
    own = cache.get(ModelSpec(name="own", source=str(tiny_model), channels_last=True))
    assert _is_fused(plain) and _is_fused(own)
    assert not plain.txt2img.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert own.txt2img.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
