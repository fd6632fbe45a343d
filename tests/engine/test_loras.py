"""LoRA: applied to its request only, at its scale, through diffusers' LoRA loading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.loras import LoraLoadError
from sdserve.engine.pipelines import PipelineSet
from sdserve.loras import UnknownLora

from .helpers import (
    Cancelled,
    ignore_steps,
    init_image,
    make_request,
    pixels,
    save_as_kohya,
    square_mask,
)


def _pixels(pipes: PipelineSet, request: GenerationRequest, loras_dir: Path) -> np.ndarray:
    options = EngineOptions(loras_dir=loras_dir, nsfw_check=False)
    [result] = generate(pipes, request, ignore_steps, options)
    return pixels(result.image)


def _has_lora_layers(pipes: PipelineSet) -> bool:
    """Whether any LoRA layer is switched on (loaded ones stay, disabled, between requests)."""
    modules = [*pipes.txt2img.unet.modules(), *pipes.txt2img.text_encoder.modules()]
    return any(hasattr(m, "lora_A") and not m.disable_adapters for m in modules)


def _base_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights, under their names before any LoRA layer wrapped them."""
    return {
        k.replace(".base_layer", ""): v for k, v in module.state_dict().items() if ".lora_" not in k
    }


def test_a_lora_changes_the_image_and_leaves_no_trace(pipes: PipelineSet, loras_dir: Path) -> None:
    request = make_request(scheduler="EULER-A")
    before = _pixels(pipes, request, loras_dir)
    weights = {k: v.clone() for k, v in _base_weights(pipes.txt2img.unet).items()}

    with_lora = _pixels(pipes, request.model_copy(update={"lora": "ink"}), loras_dir)
    after = _pixels(pipes, request, loras_dir)

    assert np.abs(with_lora - before).mean() > 1.0
    assert np.array_equal(after, before)
    assert not _has_lora_layers(pipes)
    now = _base_weights(pipes.txt2img.unet)
    assert now.keys() == weights.keys()
    assert all(torch.equal(now[k], weights[k]) for k in weights)


def test_the_same_lora_request_reproduces(pipes: PipelineSet, loras_dir: Path) -> None:
    request = make_request(lora="ink", lora_scale=0.7)

    assert np.array_equal(_pixels(pipes, request, loras_dir), _pixels(pipes, request, loras_dir))


def test_the_scale_sets_how_much_the_lora_acts(pipes: PipelineSet, loras_dir: Path) -> None:
    plain = _pixels(pipes, make_request(), loras_dir)
    distances = [
        np.abs(_pixels(pipes, make_request(lora="ink", lora_scale=s), loras_dir) - plain).mean()
        for s in (0.3, 1.0)
    ]

    assert distances[0] < distances[1]
    assert np.array_equal(
        _pixels(pipes, make_request(lora="ink", lora_scale=0.0), loras_dir), plain
    )


def test_a_kohya_lora_as_a1111_users_have_them_works_the_same(
    pipes: PipelineSet, loras_dir: Path, tmp_path: Path
) -> None:
    save_as_kohya(loras_dir / "ink.safetensors", tmp_path / "ink-kohya.safetensors")
    request = make_request(lora_scale=0.8)

    kohya = _pixels(pipes, request.model_copy(update={"lora": "ink-kohya"}), tmp_path)

    assert np.array_equal(
        kohya, _pixels(pipes, request.model_copy(update={"lora": "ink"}), loras_dir)
    )
    assert not _has_lora_layers(pipes)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_a_lora_applies_from_an_init_image_with_weighted_prompts(
    pipes: PipelineSet, loras_dir: Path, mode: str
) -> None:
    fields: dict[str, object] = {"init_image": init_image(), "use_compel": True}
    if mode == "inpaint":
        fields["mask"] = square_mask()
    plain = _pixels(pipes, make_request(**fields), loras_dir)

    with_lora = _pixels(pipes, make_request(lora="ink", **fields), loras_dir)

    assert not np.array_equal(with_lora, plain)
    assert np.array_equal(_pixels(pipes, make_request(**fields), loras_dir), plain)


def test_a_cancel_mid_request_unloads_the_lora(pipes: PipelineSet, loras_dir: Path) -> None:
    request = make_request(num_inference_steps=6)
    before = _pixels(pipes, request, loras_dir)

    def cancel(done: int, total: int) -> None:
        assert _has_lora_layers(pipes)  # applied while it runs
        raise Cancelled

    with pytest.raises(Cancelled):
        options = EngineOptions(loras_dir=loras_dir, nsfw_check=False)
        generate(pipes, request.model_copy(update={"lora": "ink"}), cancel, options)

    assert not _has_lora_layers(pipes)
    assert np.array_equal(_pixels(pipes, request, loras_dir), before)


def test_a_failing_request_unloads_the_lora(pipes: PipelineSet, loras_dir: Path) -> None:
    def crash(done: int, total: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        options = EngineOptions(loras_dir=loras_dir, nsfw_check=False)
        generate(pipes, make_request(lora="ink"), crash, options)

    assert not _has_lora_layers(pipes)


def test_an_unknown_lora_is_refused_naming_the_installed_ones(
    pipes: PipelineSet, loras_dir: Path
) -> None:
    with pytest.raises(UnknownLora, match="unknown LoRA 'nope'; installed: ink"):
        _pixels(pipes, make_request(lora="nope"), loras_dir)
    with pytest.raises(UnknownLora, match=r"unknown LoRA '\.\./ink'"):
        _pixels(pipes, make_request(lora="../ink"), loras_dir / "sub")


def test_a_lora_file_that_does_not_fit_is_a_clear_error(
    pipes: PipelineSet, loras_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    request = make_request()
    before = _pixels(pipes, request, tmp_path)

    with pytest.raises(LoraLoadError, match="LoRA 'broken' cannot be applied to this model"):
        _pixels(pipes, make_request(lora="broken"), tmp_path)

    assert not _has_lora_layers(pipes)
    assert np.array_equal(_pixels(pipes, request, tmp_path), before)


def test_a_lora_is_read_once_and_again_only_when_its_file_changes(
    pipes: PipelineSet, loras_dir: Path, tmp_path: Path
) -> None:
    lora = tmp_path / "swap.safetensors"
    lora.write_bytes((loras_dir / "ink.safetensors").read_bytes())
    request = make_request(lora="swap")
    first = _pixels(pipes, request, tmp_path)
    stat = lora.stat()
    # Same size and time, other bytes: only a second read of the file would notice.
    lora.write_bytes(b"\0" * stat.st_size)
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert np.array_equal(_pixels(pipes, request, tmp_path), first)

    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(LoraLoadError, match="LoRA 'swap' cannot be applied"):
        _pixels(pipes, request, tmp_path)
