"""The job runner: stored PNGs carry parameters sd-parsers reads; verdicts reach ImageResult."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdserve.canonical import GenerationRequest
from sdserve.engine.generate import GeneratedImage
from sdserve.jobs.models import JobStatus
from sdserve.jobs.sqlite_store import SqliteJobStore
from sdserve.storage.local import LocalImageStore
from sdserve.worker.runner import Generate, JobStopped, parameters_text
from tests.engine.helpers import init_image, make_request, png

from .helpers import one_by_one, read_parameters, run_job


def _fixed(*verdicts: bool) -> Generate:
    """A stand-in engine: grey images, seeds counting from the request's, the given verdicts."""

    def generate(request: GenerationRequest, on_step: object) -> list[GeneratedImage]:
        size = (request.width, request.height)
        return [
            GeneratedImage(Image.new("RGB", size, "grey"), request.image_seed(i), nsfw)
            for i, nsfw in enumerate(verdicts)
        ]

    return one_by_one(generate)


def test_every_png_carries_parameters_that_sd_parsers_reads(
    store: SqliteJobStore, images: LocalImageStore
) -> None:
    request = make_request(
        model="dreamshaper",
        prompt="a lighthouse at dusk, (stormy sea)1.2",
        negative_prompt="blurry, low quality",
        width=192,
        height=128,
        guidance_scale=6.5,
        num_inference_steps=25,
        scheduler="EULER-A",
        seed=41,
        num_outputs=2,
    )

    job = run_job(store, images, request, _fixed(False, False))

    assert job.status == JobStatus.COMPLETED
    assert [o.seed for o in job.outputs] == [41, 42]
    for output in job.outputs:
        info = read_parameters(images, output.key)
        [sampler] = info.samplers
        assert [p.value for p in sampler.prompts] == ["a lighthouse at dusk, (stormy sea)1.2"]
        assert [p.value for p in sampler.negative_prompts] == ["blurry, low quality"]
        assert sampler.name == "Euler a"
        assert sampler.parameters == {"seed": str(output.seed), "steps": "25", "cfg_scale": "6.5"}
        assert sampler.model is not None and sampler.model.name == "dreamshaper"
        assert info.metadata["Size"] == "192x128"


def test_multi_line_prompts_read_back_whole(store: SqliteJobStore, images: LocalImageStore) -> None:
    request = make_request(prompt="line one\nline two: more", negative_prompt="a\nb")

    [output] = run_job(store, images, request, _fixed(False)).outputs

    [sampler] = read_parameters(images, output.key).samplers
    assert [p.value for p in sampler.prompts] == ["line one\nline two: more"]
    assert [p.value for p in sampler.negative_prompts] == ["a\nb"]


def test_values_that_would_break_the_line_are_quoted_as_a1111_quotes_them() -> None:
    text = parameters_text(make_request(model="anime, v5: final"), 7)

    # A1111's own PNG-info parser (modules/infotext_utils.py); sd-parsers does not unquote.
    fields = dict(re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', text))
    assert json.loads(fields["Model"]) == "anime, v5: final"
    assert fields["Seed"] == "7"


def test_img2img_strength_and_the_lora_are_recorded_as_a1111_does(
    store: SqliteJobStore, images: LocalImageStore
) -> None:
    request = make_request(
        init_image=png(init_image()), prompt_strength=0.6, lora="ink", lora_scale=0.8
    )

    [output] = run_job(store, images, request, _fixed(False)).outputs

    info = read_parameters(images, output.key)
    assert [p.value for p in info.prompts] == ["a lighthouse at dusk <lora:ink:0.8>"]
    assert info.metadata["Denoising strength"] == "0.6"


def test_the_safety_verdicts_reach_the_job_outputs(
    store: SqliteJobStore, images: LocalImageStore
) -> None:
    job = run_job(store, images, make_request(num_outputs=3), _fixed(False, True, False))

    assert [o.nsfw for o in job.outputs] == [False, True, False]


def test_a_stopped_job_stores_nothing(store: SqliteJobStore, images: LocalImageStore) -> None:
    def stopped(request: GenerationRequest, on_step: object) -> list[GeneratedImage]:
        raise JobStopped()

    job = run_job(store, images, make_request(), one_by_one(stopped))

    assert job.outputs == []
    assert not (images.root / job.id).exists()


@pytest.mark.parametrize("verdict", [False, True])
def test_generated_images_keep_their_pixels_in_the_png(
    store: SqliteJobStore, images: LocalImageStore, verdict: bool
) -> None:
    picture = init_image()

    def generate(request: GenerationRequest, on_step: object) -> list[GeneratedImage]:
        return [GeneratedImage(picture, request.seed, verdict)]

    [output] = run_job(store, images, make_request(), one_by_one(generate)).outputs

    path = images.path(output.key)
    assert isinstance(path, Path)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(picture))
    assert output.nsfw is verdict
