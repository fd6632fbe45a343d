"""Loading models from every offline source kind, devices, and the pipeline cache."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sdserve.detect import UnservedModel
from sdserve.engine.cache import PipelineCache
from sdserve.engine.generate import generate
from sdserve.engine.memory import ModelTooLarge, estimated_bytes
from sdserve.engine.pipelines import PipelineSet, load_pipelines, resolve_device
from sdserve.registry import ModelSpec

from .helpers import make_request, pixels
from .ldm_checkpoint import save_ldm_checkpoint


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_diffusers_folder_loads_as_three_pipelines_sharing_weights(pipes: PipelineSet) -> None:
    assert pipes.device == "cpu"
    assert pipes.img2img.unet is pipes.txt2img.unet
    assert pipes.inpaint.vae is pipes.txt2img.vae
    assert pipes.inpaint.text_encoder is pipes.txt2img.text_encoder
    assert pipes.txt2img.unet.dtype == torch.float32
    assert pipes.scheduler_config["beta_schedule"] == "scaled_linear"


def test_a_single_file_checkpoint_loads_with_a_local_config(
    tiny_spec: ModelSpec, tiny_model: Path, tmp_path: Path
) -> None:
    pipes = load_pipelines(tiny_spec, "cpu")  # its own: the shared one may carry LoRA layers
    checkpoint = tmp_path / "tiny.safetensors"
    save_ldm_checkpoint(pipes.txt2img, checkpoint)
    spec = ModelSpec(name="single", source=str(checkpoint), config=str(tiny_model))
    assert spec.kind == "single_file"

    loaded = load_pipelines(spec, "cpu")

    # diffusers loads single files non-strictly: a key it misses would stay random, silently.
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded.txt2img, part), getattr(pipes.txt2img, part)), part
    request = make_request()
    [expected] = generate(pipes, request, lambda done, total: None)
    [actual] = generate(loaded, request, lambda done, total: None)
    assert np.array_equal(pixels(actual.image), pixels(expected.image))


def test_a_missing_folder_is_reported_by_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(
        UnservedModel, match=f"model lost: cannot read its configs from {re.escape(str(missing))}"
    ):
        load_pipelines(ModelSpec(name="lost", source=str(missing)), "cpu")


def test_devices_resolve_to_torch_devices() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_asking_for_a_cuda_device_torch_lacks_is_a_clear_error() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0

    with pytest.raises(ValueError, match=f"cuda:{count} was asked for, but torch sees {count}"):
        resolve_device(f"cuda:{count}")


def _spec(folder: Path, name: str) -> ModelSpec:
    return ModelSpec(name=name, source=str(folder))


def test_the_cache_reuses_a_loaded_model(tiny_model: Path) -> None:
    cache = PipelineCache("cpu")

    first = cache.get(_spec(tiny_model, "a"))

    assert cache.get(_spec(tiny_model, "a")) is first


def _bytes_of(tiny_model: Path) -> int:
    return PipelineCache("cpu").get(_spec(tiny_model, "probe")).weights_bytes


def test_the_cache_evicts_the_least_recently_used_model_beyond_its_memory(
    tiny_model: Path,
) -> None:
    size = _bytes_of(tiny_model)
    cache = PipelineCache("cpu", budget_bytes=int(size * 2.5))
    a = cache.get(_spec(tiny_model, "a"))
    cache.get(_spec(tiny_model, "b"))
    cache.get(_spec(tiny_model, "a"))

    cache.get(_spec(tiny_model, "c"))

    assert cache.loaded == ["a", "c"]
    assert cache.used_bytes <= size * 2.5
    assert cache.get(_spec(tiny_model, "a")) is a


def test_a_budget_for_one_model_holds_only_the_latest(tiny_model: Path) -> None:
    cache = PipelineCache("cpu", budget_bytes=int(_bytes_of(tiny_model) * 1.5))
    a = cache.get(_spec(tiny_model, "a"))

    cache.get(_spec(tiny_model, "b"))

    assert cache.loaded == ["b"]
    assert cache.get(_spec(tiny_model, "a")) is not a


def test_a_model_larger_than_the_budget_is_a_clear_error_before_loading(
    tiny_model: Path,
) -> None:
    cache = PipelineCache("cpu", budget_bytes=_bytes_of(tiny_model) // 2)

    with pytest.raises(ModelTooLarge, match=r"model a needs 0\.0 GiB .* more than the"):
        cache.get(_spec(tiny_model, "a"))
    assert cache.loaded == []


def test_the_estimate_read_from_the_files_matches_the_loaded_weights(tiny_model: Path) -> None:
    spec = _spec(tiny_model, "a").inspected()

    # Buffers that are not saved (CLIP's position ids) are the only difference.
    assert estimated_bytes(spec, torch.float32, "cpu") == pytest.approx(
        _bytes_of(tiny_model), rel=0.001
    )


def test_dtype_and_vae_tiling_come_from_the_models_settings(tiny_model: Path) -> None:
    spec = ModelSpec(name="t", source=str(tiny_model), dtype="bfloat16", vae_tiling=True)

    loaded = load_pipelines(spec, "cpu")

    assert loaded.txt2img.unet.dtype == torch.bfloat16
    assert loaded.txt2img.vae.use_tiling
    assert loaded.weights_bytes == pytest.approx(_bytes_of(tiny_model) / 2, rel=0.01)
    [result] = generate(loaded, make_request(), lambda done, total: None)
    assert result.image.size == (128, 128)


def test_offload_on_a_cpu_worker_is_ignored_with_a_warning(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ModelSpec(name="t", source=str(tiny_model), offload="model")

    loaded = load_pipelines(spec, "cpu")

    assert loaded.device == "cpu" and loaded.weights_bytes > 0
    assert "offload=model is for CUDA devices; ignored on cpu" in caplog.text
