"""The tiny random model the tests and benchmarks build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdserve.engine.pipelines import load_pipelines
from sdserve.registry import ModelSpec
from tests.models import random_model
from tests.models.random_model import build_random_pipeline


def test_builds_a_loadable_model_atomically(tmp_path: Path) -> None:
    path = tmp_path / "models" / "tiny"

    build_random_pipeline(path)

    pipes = load_pipelines(ModelSpec(name="default", source=str(path)), "cpu")
    assert pipes.txt2img.vae_scale_factor == 8
    assert [p.name for p in path.parent.iterdir()] == ["tiny"]  # no staging left


def test_a_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(random_model.StableDiffusionPipeline, "save_pretrained", crash)

    with pytest.raises(OSError, match="disk full"):
        build_random_pipeline(tmp_path / "tiny")

    assert list(tmp_path.iterdir()) == []


def test_the_same_seed_builds_the_same_model_without_touching_global_randomness(
    tiny_model: Path, tmp_path: Path
) -> None:
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)

    build_random_pipeline(tmp_path / "again", seed=0)

    assert torch.equal(torch.rand(3), expected_draw)
    for part in ("unet", "vae"):
        weights = f"{part}/diffusion_pytorch_model.safetensors"
        assert (tmp_path / "again" / weights).read_bytes() == (tiny_model / weights).read_bytes()
