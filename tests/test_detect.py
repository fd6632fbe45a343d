"""Family detection from diffusers folders and single-file checkpoints, and its refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdserve.detect import UnservedModel, detect_model
from sdserve.families import FamilyName
from sdserve.registry import ModelSpec, load_registry
from tests.conftest import FamilyModels

FAMILIES: list[FamilyName] = list(get_args(FamilyName))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_folder_is_read_as_its_family(family: FamilyName, family_models: FamilyModels) -> None:
    spec = ModelSpec(name="m", source=str(family_models(family))).inspected()

    assert spec.family == family


def test_the_family_comes_from_configs_not_the_name(family_models: FamilyModels) -> None:
    registry = load_registry(None, [f"stable-diffusion-v1-5={family_models('sdxl')}"])

    spec = registry.resolve("stable-diffusion-v1-5")
    assert spec is not None and spec.family == "sdxl"
    assert spec.rules.size == 1024 and spec.rules.steps == 30


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_single_file_is_read_as_its_family_and_loads_the_same_weights(
    family: FamilyName, family_models: FamilyModels, tmp_path: Path
) -> None:
    from sdserve.engine.generate import generate
    from sdserve.engine.pipelines import load_pipelines

    from .engine.helpers import make_request, pixels
    from .engine.ldm_checkpoint import (
        save_ldm_checkpoint,
        save_sd2_checkpoint,
        save_sdxl_checkpoint,
    )

    folder = family_models(family)
    from_folder = load_pipelines(ModelSpec(name="f", source=str(folder)), "cpu")
    checkpoint = tmp_path / f"{family}.safetensors"
    savers: dict[str, Callable[[Any, Path], None]] = {
        "sd1": save_ldm_checkpoint,
        "sd2": save_sd2_checkpoint,
        "sdxl": save_sdxl_checkpoint,
    }
    savers[family](from_folder.txt2img, checkpoint)

    spec = ModelSpec(name="s", source=str(checkpoint), config=str(folder)).inspected()
    assert spec.family == family

    from_file = load_pipelines(spec, "cpu")
    request = make_request(scheduler=spec.rules.scheduler, num_inference_steps=3)
    [a] = generate(from_folder, request, lambda d, t: None)
    [b] = generate(from_file, request, lambda d, t: None)
    assert np.array_equal(pixels(a.image), pixels(b.image))


def _checkpoint(path: Path, *keys: str) -> Path:
    save_file({key: torch.zeros(1, 2) for key in keys}, str(path))
    return path


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        (["double_blocks.0.img_attn.norm.key_norm.scale", "guidance_in.in_layer.weight"],
         "flux-dev"),
        (["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"], "flux-schnell"),
        (["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"], "sd3"),
    ],
)  # fmt: skip
def test_flow_checkpoints_are_read_by_their_tensor_names(
    keys: list[str], family: str, tmp_path: Path
) -> None:
    path = _checkpoint(tmp_path / "model.safetensors", *keys)

    assert detect_model("m", str(path), "single_file").family == family


def _copy_with_index(source: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(source, target)
    index = json.loads((target / "model_index.json").read_text())
    (target / "model_index.json").write_text(json.dumps(index | changes))
    return target


def test_models_of_other_families_are_refused_naming_what_was_found(
    family_models: FamilyModels, tmp_path: Path
) -> None:
    kandinsky = _copy_with_index(
        family_models("sd1"), tmp_path / "k", _class_name="KandinskyV22Pipeline"
    )
    refiner = _copy_with_index(family_models("sdxl"), tmp_path / "r", text_encoder=[None, None])
    noise = _checkpoint(tmp_path / "noise.safetensors", "some.weight")
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"pickle")

    cases = {
        kandinsky: "found a KandinskyV22Pipeline; sdserve serves Stable Diffusion 1.x,",
        refiner: "found an SDXL refiner",
        noise: "found no Stable Diffusion or FLUX.1 tensors",
        ckpt: "only .safetensors checkpoints can be inspected",
        tmp_path / "missing": "model m: cannot read its configs from",
    }
    for source, message in cases.items():
        with pytest.raises(UnservedModel, match=message):
            ModelSpec(name="m", source=str(source)).inspected()


def test_an_inpainting_only_model_is_refused(family_models: FamilyModels, tmp_path: Path) -> None:
    folder = shutil.copytree(family_models("sd1"), tmp_path / "inpainting")
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(config | {"in_channels": 9}))

    with pytest.raises(UnservedModel, match="an inpainting-only model"):
        ModelSpec(name="m", source=str(folder)).inspected()


def test_a_ckpt_file_with_its_family_set_is_taken_at_its_word(tmp_path: Path) -> None:
    spec = ModelSpec(name="m", source=str(tmp_path / "old.ckpt"), family="sd1").inspected()

    assert spec.rules.family.title == "Stable Diffusion 1.x"


def test_the_server_does_not_start_with_a_model_it_cannot_serve(
    family_models: FamilyModels, tmp_path: Path
) -> None:
    kandinsky = _copy_with_index(
        family_models("sd1"), tmp_path / "k", _class_name="KandinskyV22Pipeline"
    )
    command = [sys.executable, "-m", "sdserve", "serve", "--data-dir", str(tmp_path / "d")]

    done = subprocess.run(
        [*command, "--model", f"kandinsky={kandinsky}"], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 2
    assert f"error: model kandinsky ({kandinsky}): found a KandinskyV22Pipeline" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_models_file_entry_with_a_bad_setting_is_named(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.big]\nsource = "/x"\noffload = "disk"\n')

    with pytest.raises(UnservedModel, match=r"models.toml: model big: offload: Input should be"):
        load_registry(models, [])
