"""The model registry: config file, --model flags, the demo model as default and its aliases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdserve.detect import UnservedModel
from sdserve.registry import DEMO_MODEL_DIR, load_registry

SD1_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"


def test_the_demo_model_is_the_default_and_answers_the_hosted_apis_names() -> None:
    registry = load_registry(None, [])
    spec = registry.resolve("stabilityai/stable-diffusion-2-1")
    assert spec is not None and spec.builtin and spec.name == "default"
    assert registry.resolve("stable-diffusion-v1") is spec
    assert spec.source == str(DEMO_MODEL_DIR) and spec.native_size == 64
    assert (DEMO_MODEL_DIR / "model_index.json").is_file()  # shipped in the package
    assert registry.resolve("sd-xl") is None


def test_file_and_flags(tmp_path: Path, tiny_model: Path) -> None:
    checkpoint = tmp_path / "dream.safetensors"
    save_file({SD1_KEY: torch.zeros(1)}, str(checkpoint))
    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.default]\nsource = "{tiny_model}"\naliases = ["sd15"]\nmax_size = 1024\n'
        "guidance_scale = 5.5\nnative_size = 256\nsteps = 20\n\n"
        f'[models.dream]\nsource = "{checkpoint}"\nconfig = "{tiny_model}"\n'
    )
    flags = [f"anime={tiny_model}", f"stable-diffusion-v1={tiny_model}"]
    registry = load_registry(models, flags)
    default = registry.resolve("sd15")
    assert default is not None and default.rules.max_size == 1024 and default.kind == "folder"
    assert (default.rules.guidance_scale, default.native_size) == (5.5, 256)
    assert (default.rules.steps, default.rules.size, default.rules.scheduler) == (20, 512, "K-LMS")
    assert registry.resolve("stabilityai/stable-diffusion-2-1") is default
    # a model named like an alias claims that name
    v1 = registry.resolve("stable-diffusion-v1")
    assert v1 is not None and v1.name == "stable-diffusion-v1"
    dream = registry.resolve("dream")
    assert dream is not None and dream.kind == "single_file" and dream.config == str(tiny_model)
    assert dream.family == "sd1" and dream.rules.size == 512  # SD 1.x's, the file says none
    assert registry.resolve("anime") is not None


def test_speed_options_are_read_per_model(tmp_path: Path, tiny_model: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        f'[models.fast]\nsource = "{tiny_model}"\ncompile = true\nchannels_last = true\n'
        f'fuse_qkv = true\n\n[models.plain]\nsource = "{tiny_model}"\n'
    )
    registry = load_registry(models, [])
    fast, plain = registry.resolve("fast"), registry.resolve("plain")
    assert fast is not None and (fast.compile, fast.channels_last, fast.fuse_qkv) == (True,) * 3
    assert (
        plain is not None and (plain.compile, plain.channels_last, plain.fuse_qkv) == (False,) * 3
    )


def test_bare_model_flag_is_the_default(tiny_model: Path) -> None:
    registry = load_registry(None, [str(tiny_model)])
    spec = registry.resolve("default")
    assert spec is not None and spec.kind == "folder" and not spec.builtin
    assert (spec.rules.guidance_scale, spec.native_size) == (7.5, None)  # what SD models expect


def test_a_hub_model_whose_configs_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.sdxl]\nsource = "someone/not-cached-here"\n')

    with pytest.raises(UnservedModel, match="model sdxl: cannot read its configs from someone/"):
        load_registry(models, [])
    # Told its family, the registry does not look: the worker loads it from the hub's cache.
    models.write_text('[models.sdxl]\nsource = "someone/not-cached-here"\nfamily = "sdxl"\n')
    spec = load_registry(models, []).resolve("sdxl")
    assert spec is not None and spec.kind == "hub" and spec.rules.size == 1024
