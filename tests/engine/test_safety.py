"""The NSFW check: the model's own safety checker when it has one, NudeNet otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from sdserve.engine import safety
from sdserve.engine.generate import EngineOptions, generate
from sdserve.engine.pipelines import PipelineSet, load_pipelines
from sdserve.registry import ModelSpec

from .helpers import SIZE, ignore_steps, init_image, make_request, pixels, square_mask


def _tiny_safety_checker(flag_everything: bool) -> StableDiffusionSafetyChecker:
    """SD's checker class with a tiny random CLIP; its thresholds flag all images, or none."""
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 4,
    }
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1}
    config = CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checker = StableDiffusionSafetyChecker(config)
    # An image is flagged when its cosine similarity to a concept exceeds that concept's
    # threshold; similarities lie in [-1, 1].
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0 if flag_everything else 2.0)
        checker.special_care_embeds_weights.fill_(2.0)
    return checker


@pytest.fixture(scope="module")
def checked_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved with a safety checker and feature extractor, as SD 1.5 ships."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    pipe.register_modules(  # type: ignore[no-untyped-call]
        safety_checker=_tiny_safety_checker(flag_everything=True),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
    )
    path = tmp_path_factory.mktemp("models") / "checked"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checked(checked_model: Path) -> PipelineSet:
    return load_pipelines(ModelSpec(name="checked", source=str(checked_model)), "cpu")


def test_the_models_own_checker_is_loaded_and_kept_out_of_the_pipelines(
    checked: PipelineSet,
) -> None:
    assert isinstance(checked.safety_checker, StableDiffusionSafetyChecker)
    assert checked.feature_extractor is not None
    assert all(
        p.safety_checker is None for p in (checked.txt2img, checked.img2img, checked.inpaint)
    )


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_the_models_checker_flags_and_blanks_when_asked(checked: PipelineSet, mode: str) -> None:
    fields: dict[str, object] = {"num_outputs": 2}
    if mode != "txt2img":
        fields["init_image"] = init_image()
    if mode == "inpaint":
        fields["mask"] = square_mask()

    kept = generate(checked, make_request(**fields), ignore_steps)
    blanked = generate(checked, make_request(blank_nsfw=True, **fields), ignore_steps)

    assert [r.nsfw for r in kept] == [True, True]
    # Flagged but not blanked: the client asked for the verdict, not a black image.
    assert all(pixels(r.image).std() > 1.0 for r in kept)
    assert [r.nsfw for r in blanked] == [True, True]
    for result in blanked:
        assert result.image.size == (SIZE, SIZE)
        assert result.image.mode == "RGB"
        assert not pixels(result.image).any()


def test_the_models_checker_passes_what_it_does_not_flag(
    checked: PipelineSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert checked.safety_checker is not None
    monkeypatch.setattr(checked, "safety_checker", _tiny_safety_checker(flag_everything=False))

    [result] = generate(checked, make_request(blank_nsfw=True), ignore_steps)

    assert result.nsfw is False
    assert pixels(result.image).std() > 1.0


def test_the_check_can_be_turned_off(checked: PipelineSet) -> None:
    options = EngineOptions(nsfw_check=False)

    [result] = generate(checked, make_request(blank_nsfw=True), ignore_steps, options)

    assert result.nsfw is False
    assert pixels(result.image).std() > 1.0


def test_without_a_checker_nudenet_judges_and_passes_noise(pipes: PipelineSet) -> None:
    assert pipes.safety_checker is None

    results = generate(pipes, make_request(num_outputs=2, blank_nsfw=True), ignore_steps)

    assert [r.nsfw for r in results] == [False, False]
    assert all(pixels(r.image).std() > 1.0 for r in results)


def test_nudenet_runs_offline_on_any_image() -> None:
    # NudeNet's model ships in its wheel: no download happens here or ever.
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    assert safety._nudenet_verdict(Image.fromarray(noise)) is False
    assert safety._nudenet_verdict(Image.new("RGB", (128, 192), "white")) is False


def test_nudenet_verdicts_count_only_exposed_parts_with_confidence(
    pipes: PipelineSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Detector:
        def __init__(self) -> None:
            self.detections: list[dict[str, object]] = []

        def detect(self, image: np.ndarray) -> list[dict[str, object]]:
            assert image.shape == (SIZE, SIZE, 4)  # RGBA, which NudeNet converts correctly
            return self.detections

    detector = Detector()
    monkeypatch.setattr(safety, "_nudenet", lambda: detector)
    image = Image.new("RGB", (SIZE, SIZE))

    detector.detections = [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 5, 5]}]
    assert safety.is_nsfw(pipes, image) is False
    detector.detections = [{"class": "BUTTOCKS_EXPOSED", "score": 0.3, "box": [0, 0, 5, 5]}]
    assert safety.is_nsfw(pipes, image) is False
    detector.detections = [{"class": "BUTTOCKS_EXPOSED", "score": 0.8, "box": [0, 0, 5, 5]}]
    assert safety.is_nsfw(pipes, image) is True


def test_blanking_keeps_size_and_mode() -> None:
    for image in (Image.new("RGB", (192, 128), "red"), Image.new("RGBA", (64, 64), "blue")):
        black = safety.blanked(image)

        assert (black.size, black.mode) == (image.size, image.mode)
        assert not np.asarray(black).any()
