"""Runs one claimed job: generate, store the images, finish the job; stops when told to."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdserve import metrics
from sdserve.canonical import GenerationRequest, ImageResult
from sdserve.jobs.models import Job, JobStatus
from sdserve.jobs.store import JobStore
from sdserve.samplers import SAMPLERS
from sdserve.storage.base import ImageStore
from sdserve.worker.watch import Run, RunWatch

if TYPE_CHECKING:  # the API process imports this module and must not load torch
    from sdserve.engine.generate import GeneratedImage, OnPreview

log = logging.getLogger(__name__)


class JobStopped(BaseException):
    """The job was cancelled or timed out; derives from BaseException so nothing swallows it."""


class Generate(Protocol):
    """The engine as the runner calls it: requests sharing a batch_key in, each one's images
    out; told each step, and given previews of the images forming (engine.generate.OnPreview)."""

    def __call__(
        self,
        requests: list[GenerationRequest],
        on_step: Callable[[int, int], None],
        on_preview: OnPreview | None = None,
    ) -> list[list[GeneratedImage]]: ...


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


PNG_COMPRESS_LEVEL = 1
"""zlib's fastest level: a request waits for its PNG, which level 6 (Pillow's default) makes
twice as slowly for files only about 12% smaller (38 against 18 ms at 512x512, 149 against 73
ms at 1024x1024, on one core of this project's CPU)."""


def png_bytes(image: Image.Image, request: GenerationRequest, seed: int) -> bytes:
    """The PNG of one output, with the A1111-style `parameters` text chunk."""
    info = PngInfo()
    info.add_text("parameters", parameters_text(request, seed))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


class JobRunner:
    """Executes jobs for one worker: a batch's generation on the calling (main) thread, its
    images' encoding and storing on a thread of their own, overlapping the next batch."""

    def __init__(
        self,
        store: JobStore,
        images: ImageStore,
        generate: Generate,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        """`on_finished`: told each job's id once its run has ended and been recorded."""
        self._store = store
        self._images = images
        self._generate = generate
        self._on_finished = on_finished or (lambda job_id: None)
        self._watch = RunWatch(store)
        self._finishing = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._pending: Future[None] | None = None

    def run(self, job: Job) -> None:
        """Run one claimed job to its end (recorded when this returns)."""
        self.run_batch([job])
        self.drain()

    def run_batch(self, jobs: list[Job]) -> None:
        """Generate claimed jobs that share a batch_key in one call; each job then ends on its
        own (completed, failed, cancelled or timed out) once its images are stored. Returns
        when the images are made; never raises for a job's own failure."""
        runs = [Run(job) for job in jobs]
        for job in jobs:
            metrics.run_started(job.endpoint, (job.started_at or time.time()) - job.created_at)
        self._watch.follow(runs)
        clock = _StepClock()
        started = time.perf_counter()
        try:
            try:
                results = self._generate(
                    [r.job.request for r in runs],
                    self._on_step(runs, clock),
                    self._on_preview(runs),
                )
            finally:
                clock.record(jobs[0].endpoint)
        except JobStopped:
            self._after([(run, None) for run in runs], None)
            return
        except Exception as exc:
            if len(runs) > 1:  # one job's fault must not fail the others: each again alone
                log.warning(
                    "a batch of %d failed (%s); running its jobs one by one", len(runs), exc
                )
                for run in runs:
                    self._watch.forget(run)
                for job in jobs:
                    self._resume(job)
                return
            self._after([(runs[0], _failure(exc, runs[0].job))], None)
            return
        generated = time.perf_counter()
        timing = _BatchTiming(len(runs), started, clock, generated)
        self._after(list(zip(runs, results, strict=True)), timing)

    def drain(self) -> None:
        """Wait until every batch handed on has been stored and recorded."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        self.drain()
        self._finishing.shutdown()
        self._watch.close()

    def _resume(self, job: Job) -> None:
        if self._store.attempt_status(job.id, job.attempts) == JobStatus.IN_PROGRESS:
            self.run_batch([job])
        else:
            self._store.release(job.id, job.attempts)

    def _after(self, ended: list[tuple[Run, _Outcome]], timing: _BatchTiming | None) -> None:
        # One batch stores while the next generates; a slower store holds the generation back
        # rather than piling up images in memory.
        self.drain()
        self._pending = self._finishing.submit(self._finish_all, ended, timing)

    def _finish_all(self, ended: list[tuple[Run, _Outcome]], timing: _BatchTiming | None) -> None:
        encoded = stored = 0.0
        for run, outcome in ended:
            self._watch.forget(run)
            try:
                encode_s, store_s = self._finish(run, outcome)
            except Exception:  # the store is away: the job stays IN_PROGRESS and is re-run
                log.exception("job %s: could not record its end", run.job.id)
                continue
            encoded += encode_s
            stored += store_s
            self._on_finished(run.job.id)
        if timing is not None:
            timing.log(encoded, stored)

    def _finish(self, run: Run, outcome: _Outcome) -> tuple[float, float]:
        """End one run; return the seconds spent encoding and storing its images."""
        job = run.job
        if run.stopped or outcome is None:
            log.info("job %s stopped", job.id)
            self._store.release(job.id, run.attempt)
            return 0.0, 0.0
        if isinstance(outcome, str):
            self._store.finish(job.id, run.attempt, JobStatus.FAILED, time.time(), error=outcome)
            return 0.0, 0.0
        run.flush(self._store)
        begun = time.perf_counter()
        pngs = [png_bytes(r.image, job.request, r.seed) for r in outcome]
        encoded = time.perf_counter()
        outputs = [
            ImageResult(key=self._images.put(job.id, i, png), seed=r.seed, nsfw=r.nsfw)
            for i, (png, r) in enumerate(zip(pngs, outcome, strict=True))
        ]
        stored = time.perf_counter()
        metrics.images_generated(job.endpoint, len(outputs))
        self._store.finish(job.id, run.attempt, JobStatus.COMPLETED, time.time(), outputs=outputs)
        return encoded - begun, stored - encoded

    @staticmethod
    def _on_step(runs: list[Run], clock: _StepClock) -> Callable[[int, int], None]:
        def on_step(done: int, total: int) -> None:
            clock.tick(done)
            for run in runs:
                run.step(done, total)
            if all(run.stopped for run in runs):  # nobody wants these images any more
                raise JobStopped()

        return on_step

    @staticmethod
    def _on_preview(runs: list[Run]) -> OnPreview:
        """Each job's preview is its first image's."""
        firsts = []
        index = 0
        for run in runs:
            firsts.append(index)
            index += run.job.request.num_outputs

        def on_preview(done: int, total: int, first: int, images: list[Image.Image]) -> None:
            for run, at in zip(runs, firsts, strict=True):
                if first <= at < first + len(images):
                    run.preview(done, total, images[at - first])

        return on_preview


_Outcome = list["GeneratedImage"] | str | None
"""A run's images, its failure's message, or None: stopped."""


def _failure(exc: Exception, job: Job) -> str:
    if isinstance(exc, ValueError):
        return str(exc)
    log.error("job %s failed", job.id, exc_info=exc)
    return f"generation failed: {type(exc).__name__}: {exc}"


class _BatchTiming:
    """Where one batch's time went, logged once its images are stored (the engine's metrics)."""

    def __init__(self, size: int, started: float, clock: _StepClock, generated: float) -> None:
        self.size = size
        self.steps_per_s = clock.steps_per_s()
        last_step = clock.last_step_at() or generated
        self.denoise_s = last_step - started
        self.decode_s = generated - last_step

    def log(self, encode_s: float, store_s: float) -> None:
        log.info(
            "batch of %d: %.1f steps/s; ms spent: prompts+denoising %.0f, VAE decode+safety %.0f,"
            " PNG encoding %.0f, storing %.0f",
            self.size, self.steps_per_s, self.denoise_s * 1000, self.decode_s * 1000,
            encode_s * 1000, store_s * 1000,
        )  # fmt: skip


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

    def steps_per_s(self) -> float:
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return 0.0
        return (self._last[0] - self._first[0]) / (self._last[1] - self._first[1])

    def last_step_at(self) -> float | None:
        return None if self._last is None else self._last[1]

    def record(self, model: str) -> None:
        if self._first is not None and self._last is not None and self._last[0] > self._first[0]:
            steps = self._last[0] - self._first[0]
            metrics.denoised(model, steps, self._last[1] - self._first[1])
