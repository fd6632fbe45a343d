"""The tiny random models of every family the tests and benchmarks build: loadable, seeded,
atomic. (What each family's model is: test_random_unet.py, test_random_flow.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from sdserve.engine.pipelines import load_pipelines
from sdserve.families import FamilyName
from sdserve.registry import ModelSpec
from tests.models.random_model import build_random_family, build_random_pipeline

FAMILIES: tuple[FamilyName, ...] = get_args(FamilyName)
TEXT_ENCODERS = {"sd1": 1, "sd2": 1, "sdxl": 2, "sd3": 3, "flux-dev": 2, "flux-schnell": 2}


def test_builds_a_loadable_model_atomically(tmp_path: Path) -> None:
    path = tmp_path / "models" / "tiny"

    build_random_pipeline(path)

    pipes = load_pipelines(ModelSpec(name="default", source=str(path)), "cpu")
    assert pipes.txt2img.vae_scale_factor == 8
    assert [p.name for p in path.parent.iterdir()] == ["tiny"]  # no staging left


@pytest.mark.parametrize("family", FAMILIES)
def test_a_failed_build_leaves_nothing_behind(
    family: FamilyName, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(DiffusionPipeline, "save_pretrained", crash)

    with pytest.raises(OSError, match="disk full"):
        build_random_family(tmp_path / "tiny", family)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_the_seed_decides_every_weight_without_touching_global_randomness(
    family: FamilyName, tmp_path: Path
) -> None:
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)

    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        build_random_family(tmp_path / name, family, seed)

    assert torch.equal(torch.rand(3), expected_draw)
    first = tmp_path / "first"
    weights = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert len(weights) == 2 + TEXT_ENCODERS[family]  # the denoiser, the VAE, the encoders
    for part in weights:
        same, again, other = (tmp_path / build / part for build in ("first", "again", "other"))
        assert again.read_bytes() == same.read_bytes(), part
        assert other.read_bytes() != same.read_bytes(), part
