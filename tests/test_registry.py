"""The model registry: config file, --model flags, the demo model as default and its aliases."""

from __future__ import annotations

from pathlib import Path

from sdserve.demo import DEMO_MODEL_DIR
from sdserve.registry import load_registry


def test_the_demo_model_is_the_default_and_answers_the_hosted_apis_names() -> None:
    registry = load_registry(None, [])
    spec = registry.resolve("stabilityai/stable-diffusion-2-1")
    assert spec is not None and spec.builtin and spec.name == "default"
    assert registry.resolve("stable-diffusion-v1") is spec
    assert spec.source == str(DEMO_MODEL_DIR) and spec.native_size == 64
    assert (DEMO_MODEL_DIR / "model_index.json").is_file()  # shipped in the package
    assert registry.resolve("sd-xl") is None


def test_file_and_flags(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.default]\nsource = "/m/sd15"\naliases = ["sd15"]\nmax_size = 1024\n'
        "guidance_scale = 5.5\nnative_size = 256\n\n"
        '[models.dream]\nsource = "/m/dream.safetensors"\nconfig = "/m/sd15"\n'
    )
    registry = load_registry(models, ["anime=/m/anime", "stable-diffusion-v1=/m/v1"])
    default = registry.resolve("sd15")
    assert default is not None and default.max_size == 1024 and default.kind == "folder"
    assert (default.guidance_scale, default.native_size) == (5.5, 256)
    assert registry.resolve("stabilityai/stable-diffusion-2-1") is default
    # a model named like an alias claims that name
    v1 = registry.resolve("stable-diffusion-v1")
    assert v1 is not None and v1.source == "/m/v1"
    dream = registry.resolve("dream")
    assert dream is not None and dream.kind == "single_file" and dream.config == "/m/sd15"
    assert registry.resolve("anime") is not None


def test_bare_model_flag_is_the_default() -> None:
    registry = load_registry(None, ["runwayml/stable-diffusion-v1-5"])
    spec = registry.resolve("default")
    assert spec is not None and spec.kind == "hub" and not spec.builtin
    assert (spec.guidance_scale, spec.native_size) == (7.5, None)  # what SD models expect
