"""Generating images: every scheduler and mode, seeds, strength, inpainting, progress, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve.canonical import SCHEDULER_NAMES, GenerationRequest
from sdserve.engine.generate import EngineOptions, UnsupportedRequest, generate, generate_batch
from sdserve.engine.pipelines import PipelineSet

from .helpers import (
    SIZE,
    Cancelled,
    ignore_steps,
    init_image,
    make_request,
    mean_difference,
    pixels,
    square_mask,
)

MODES = ("txt2img", "img2img", "inpaint")


def _request(
    mode: str, width: int = SIZE, height: int = SIZE, **overrides: object
) -> GenerationRequest:
    if mode != "txt2img":
        overrides.setdefault("init_image", init_image(width, height))
    if mode == "inpaint":
        overrides.setdefault("mask", square_mask(width, height))
    return make_request(width=width, height=height, **overrides)


def _runnable() -> list[tuple[str, str]]:
    return [(s, m) for s in SCHEDULER_NAMES for m in MODES if s != "IPNDM" or m == "txt2img"]


@pytest.mark.parametrize(("scheduler", "mode"), _runnable())
def test_every_scheduler_makes_an_image_in_every_mode(
    pipes: PipelineSet, scheduler: str, mode: str
) -> None:
    [result] = generate(pipes, _request(mode, scheduler=scheduler), ignore_steps)

    assert result.image.size == (SIZE, SIZE)
    assert result.image.mode == "RGB"
    assert pixels(result.image).std() > 1.0
    assert result.seed == 1234


@pytest.mark.parametrize("mode", MODES)
def test_images_come_in_the_requested_size(pipes: PipelineSet, mode: str) -> None:
    [result] = generate(pipes, _request(mode, width=192, height=128), ignore_steps)

    assert result.image.size == (192, 128)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_ipndm_is_refused_for_init_images_with_a_clear_message(
    pipes: PipelineSet, mode: str
) -> None:
    with pytest.raises(UnsupportedRequest, match="scheduler IPNDM cannot be used for"):
        generate(pipes, _request(mode, scheduler="IPNDM"), ignore_steps)


@pytest.mark.parametrize("mode", MODES)
def test_each_image_of_a_batch_is_reproduced_by_its_own_seed(pipes: PipelineSet, mode: str) -> None:
    # EULER-A draws fresh noise at every step, so it also catches a shared generator.
    batch = generate(
        pipes, _request(mode, scheduler="EULER-A", num_outputs=3, seed=41), ignore_steps
    )

    assert [r.seed for r in batch] == [41, 42, 43]
    for result in batch:
        [alone] = generate(
            pipes, _request(mode, scheduler="EULER-A", seed=result.seed), ignore_steps
        )
        # One batched call sums in another order: within one level of 255 (README).
        difference = np.abs(pixels(alone.image).astype(int) - pixels(result.image).astype(int))
        assert difference.max() <= 1, difference.max()
    assert not np.array_equal(pixels(batch[0].image), pixels(batch[1].image))


@pytest.mark.parametrize("mode", MODES)
def test_with_batching_off_each_image_is_exactly_its_seeds(pipes: PipelineSet, mode: str) -> None:
    exact = EngineOptions(batch_images=False)
    request = _request(mode, scheduler="EULER-A", num_outputs=2, seed=41)
    batch = generate(pipes, request, ignore_steps, exact)
    [alone] = generate(pipes, _request(mode, scheduler="EULER-A", seed=42), ignore_steps, exact)
    assert np.array_equal(pixels(alone.image), pixels(batch[1].image))


def test_only_requests_of_one_batch_key_share_a_call(pipes: PipelineSet) -> None:
    requests = [
        _request("txt2img", num_inference_steps=4),
        _request("txt2img", num_inference_steps=5),
    ]
    with pytest.raises(ValueError, match="one batch_key"):
        generate_batch(pipes, requests, ignore_steps)
    with pytest.raises(ValueError, match="one batch_key"):
        generate_batch(pipes, [_request("img2img"), _request("img2img")], ignore_steps)


def test_weighted_prompts_in_a_batch_run_one_after_another_exactly(pipes: PipelineSet) -> None:
    # compel's embeddings are per request: such a batch runs request by request, each exact.
    weighted = EngineOptions(compel_everywhere=True)
    requests = [_request("txt2img", prompt="a (red)1.4 ball", seed=5), _request("txt2img", seed=6)]
    steps: list[tuple[int, int]] = []
    batch = generate_batch(pipes, requests, lambda d, t: steps.append((d, t)), weighted)
    for request, [result] in zip(requests, batch, strict=True):
        [alone] = generate(pipes, request, ignore_steps, weighted)
        assert np.array_equal(pixels(alone.image), pixels(result.image))
    assert [d for d, _ in steps] == list(range(1, len(steps) + 1))
    assert steps[-1][0] == steps[-1][1]


def _round_trip(pipes: PipelineSet, image: Image.Image) -> Image.Image:
    """The image as the tiny model's (random) VAE gives it back, before any denoising."""
    pipe = pipes.img2img
    with torch.no_grad():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample
    result: Image.Image = pipe.image_processor.postprocess(decoded)[0]
    return result


def test_img2img_departs_further_from_the_init_image_as_strength_grows(
    pipes: PipelineSet,
) -> None:
    # A random VAE cannot reproduce any image, so the init image as the model sees it is its
    # VAE round trip; the further denoising goes, the further the output strays from it.
    seen = _round_trip(pipes, init_image())
    distances = []
    for strength in (0.2, 0.5, 0.9):
        request = _request("img2img", prompt_strength=strength, num_inference_steps=10)
        [result] = generate(pipes, request, ignore_steps)
        distances.append(mean_difference(result.image, seen))

    assert distances[0] < distances[1] < distances[2]
    assert distances[2] > 1.5 * distances[0]


def test_a_strength_too_small_for_one_step_still_runs_one(pipes: PipelineSet) -> None:
    calls: list[tuple[int, int]] = []
    request = _request("img2img", prompt_strength=0.0, num_inference_steps=10)

    [result] = generate(pipes, request, lambda done, total: calls.append((done, total)))

    assert calls == [(1, 1)]
    assert result.image.size == (SIZE, SIZE)


def test_inpainting_keeps_the_unmasked_pixels_exactly(pipes: PipelineSet) -> None:
    original = pixels(init_image())
    kept = pixels(square_mask()) == 0

    [result] = generate(pipes, _request("inpaint", prompt_strength=1.0), ignore_steps)

    out = pixels(result.image)
    assert np.array_equal(out[kept], original[kept])
    assert np.abs(out[~kept] - original[~kept]).mean() > 10


def test_progress_counts_every_step_of_every_image(pipes: PipelineSet) -> None:
    calls: list[tuple[int, int]] = []
    # img2img at strength 0.5 runs 5 of 10 steps: for two images, 5 batched, or 10 one by one.
    request = _request("img2img", prompt_strength=0.5, num_inference_steps=10, num_outputs=2)

    generate(pipes, request, lambda done, total: calls.append((done, total)))
    assert calls == [(done, 5) for done in range(1, 6)]

    calls.clear()
    exact = EngineOptions(batch_images=False)
    generate(pipes, request, lambda done, total: calls.append((done, total)), exact)
    assert calls == [(done, 10) for done in range(1, 11)]


def test_progress_total_counts_second_order_steps(pipes: PipelineSet) -> None:
    calls: list[tuple[int, int]] = []

    generate(
        pipes,
        _request("txt2img", scheduler="HEUN", num_outputs=2),
        lambda d, t: calls.append((d, t)),
    )

    done = [d for d, _ in calls]
    assert done == list(range(1, len(calls) + 1))
    assert {t for _, t in calls} == {calls[-1][0]}
    assert calls[-1][0] > 3  # Heun evaluates the model about twice per step (3 steps, batched)


def test_a_cancel_raised_in_on_step_stops_generation(pipes: PipelineSet) -> None:
    calls: list[int] = []

    def cancel_at_step_two(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate(
            pipes, _request("txt2img", num_inference_steps=8, num_outputs=2), cancel_at_step_two
        )

    assert calls == [1, 2]


def test_a_cancelled_run_does_not_disturb_the_next(pipes: PipelineSet) -> None:
    request = _request("txt2img", scheduler="DPM-M", num_inference_steps=4)
    [before] = generate(pipes, request, ignore_steps)

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        generate(pipes, request, cancel)
    [after] = generate(pipes, request, ignore_steps)

    assert np.array_equal(pixels(before.image), pixels(after.image))


def test_a_mask_without_an_init_image_is_refused(pipes: PipelineSet) -> None:
    with pytest.raises(UnsupportedRequest, match="mask needs an init_image"):
        generate(pipes, make_request(mask=square_mask()), ignore_steps)


def test_an_init_image_of_the_wrong_size_is_refused(pipes: PipelineSet) -> None:
    request = make_request(init_image=Image.new("RGB", (64, 64)))

    with pytest.raises(UnsupportedRequest, match="init_image is 64x64, but the request is 128x128"):
        generate(pipes, request, ignore_steps)
