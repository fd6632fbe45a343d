"""Runs one claimed job: generate, store the images, finish the job; stops when told to."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdserve import metrics
from sdserve.canonical import GenerationRequest, ImageResult
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.store import JobStore
from sdserve.samplers import SAMPLERS
from sdserve.storage.base import ImageStore

if TYPE_CHECKING:  # the API process imports this module and must not load torch
    from sdserve.engine.generate import GeneratedImage

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 0.1
"""Progress is written at most this often; the stop check still happens every step."""


class JobStopped(BaseException):
    """The job was cancelled or timed out; derives from BaseException so nothing swallows it."""


Generate = Callable[[GenerationRequest, Callable[[int, int], None]], list["GeneratedImage"]]


def parameters_text(request: GenerationRequest, seed: int) -> str:
    """A1111's `parameters` text of one output image, as PNG-info readers parse it."""
    prompt = request.prompt
    if request.lora is not None:
        # A1111 names a LoRA in the prompt; pasted back there, it applies the same one.
        prompt += f" <lora:{request.lora}:{request.lora_scale}>"
    lines = [prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields: dict[str, object] = {
        "Steps": request.num_inference_steps,
        "Sampler": SAMPLERS[request.scheduler].a1111,
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": request.model,
    }
    if request.init_image is not None:
        fields["Denoising strength"] = request.prompt_strength
    lines.append(", ".join(f"{key}: {_quoted(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def _quoted(value: object) -> str:
    # A1111's own rule: values that would break the `key: value, ...` line go in JSON quotes.
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def png_bytes(image: Image.Image, request: GenerationRequest, seed: int) -> bytes:
    """The PNG of one output, with the A1111-style `parameters` text chunk."""
    info = PngInfo()
    info.add_text("parameters", parameters_text(request, seed))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class JobRunner:
    """Executes jobs for one worker."""

    def __init__(self, store: JobStore, images: ImageStore, generate: Generate) -> None:
        self._store = store
        self._images = images
        self._generate = generate

    def run(self, job: Job) -> None:
        """Run a claimed job to its end; never raises for a job's own failure."""
        attempt = job.attempts
        model = job.endpoint
        metrics.run_started(model, (job.started_at or time.time()) - job.created_at)
        clock = _StepClock()
        try:
            started = time.perf_counter()
            try:
                results = self._generate(job.request, self._step_callback(job, clock))
            finally:
                clock.record(model)
            generated = time.perf_counter()
            outputs = [
                ImageResult(
                    key=self._images.put(job.id, i, png_bytes(r.image, job.request, r.seed)),
                    seed=r.seed,
                    nsfw=r.nsfw,
                )
                for i, r in enumerate(results)
            ]
        except JobStopped:
            log.info("job %s stopped", job.id)
            self._store.release(job.id, attempt)
            return
        except ValueError as exc:
            self._fail(job, attempt, str(exc))
            return
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self._fail(job, attempt, f"generation failed: {type(exc).__name__}: {exc}")
            return
        stored = time.perf_counter()
        metrics.images_generated(model, len(outputs))
        self._store.finish(job.id, attempt, JobStatus.COMPLETED, time.time(), outputs=outputs)
        log.info(
            "job %s: generated in %.0f ms, stored in %.0f ms",
            job.id, (generated - started) * 1000, (stored - generated) * 1000,
        )  # fmt: skip

    def _fail(self, job: Job, attempt: int, message: str) -> None:
        self._store.finish(job.id, attempt, JobStatus.FAILED, time.time(), error=message)

    def _step_callback(self, job: Job, clock: _StepClock) -> Callable[[int, int], None]:
        attempt = job.attempts
        started = job.started_at or time.time()
        timeout_ms = job.policy.execution_timeout_ms
        deadline = started + timeout_ms / 1000 if timeout_ms else None
        last_write = 0.0

        def on_step(done: int, total: int) -> None:
            nonlocal last_write
            clock.tick(done)
            now = time.time()
            if deadline is not None and now > deadline:
                self._store.finish(
                    job.id, attempt, JobStatus.TIMED_OUT, now, error="execution timeout exceeded"
                )
                raise JobStopped()
            if now - last_write >= _PROGRESS_EVERY_S or done == total:
                last_write = now
                status = self._store.add_progress(job.id, attempt, done, total)
            else:
                status = self._store.attempt_status(job.id, attempt)
            if status != JobStatus.IN_PROGRESS:
                raise JobStopped()

        return on_step


class _StepClock:
    """Times a run's denoising from its first step's end to its last's, so steps/s leaves out
    the model's loading and the prompt's encoding that come before the first step."""

    def __init__(self) -> None:
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    def tick(self, done: int) -> None:
        mark = (done, time.perf_counter())
        if self._first is None:
            self._first = mark
        self._last = mark

    def record(self, model: str) -> None:
        if self._first is not None and self._last is not None and self._last[0] > self._first[0]:
            steps = self._last[0] - self._first[0]
            metrics.denoised(model, steps, self._last[1] - self._first[1])
