"""Where a GPU's time goes in SD 1.5 generation (real architecture, random weights).

bench/gpu.py measures the served numbers; this says why they are what they are, in one short
run: diffusers' own call at batch sizes 1, 8 and 16 (seconds per image, and per step), as
loaded and then with cuDNN's autotuning and channels-last; the denoising alone (no VAE decode)
at batch 8; a profile of one batch-8 call (the GPU's busy share of the call, the kernels that
take the most); and sdserve's engine (`generate`, one request of 8 images) against the raw
batch-8 call.

    python bench/gpu_profile.py                            # on a GPU: about 2 min on an H200
    python bench/gpu_profile.py --device cpu --tiny        # smoke: tiny model, 128x128
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

say = functools.partial(print, flush=True)
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
BATCHES = (1, 8, 16)
PROFILED_BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model, 128x128: a smoke check")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch
    from gpu import build_model, load_raw

    from sdserve.engine.schedulers import make_scheduler
    from sdserve.families import FAMILIES
    from sdserve.registry import ModelSpec

    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    say(f"{name}, torch {torch.__version__}, {args.steps} steps")
    with tempfile.TemporaryDirectory(prefix="sdserve-gpu-profile-") as scratch:
        folder = Path(scratch) / "sd1"
        spec = ModelSpec(name="sd1", source=str(folder), family="sd1")
        build_model(folder, "sd1", args.device, args.tiny)
        size = 128 if args.tiny else FAMILIES["sd1"].size
        pipe = load_raw(folder, "sd1", args.device)
        pipe.scheduler = make_scheduler(FAMILIES["sd1"].scheduler, pipe.scheduler.config, "sd1")
        timer = functools.partial(_timed, cuda)
        call = functools.partial(_raw_call, pipe, args.device, size, args.steps)
        raw_batch = _batches(timer, call, args.steps, "as loaded")
        _denoising_share(timer, call, raw_batch)
        _profile(call, cuda)
        _engine(spec, args.device, size, args.steps, timer, raw_batch)
        if cuda:
            torch.backends.cudnn.benchmark = True
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        _batches(timer, call, args.steps, "cuDNN autotuning + channels-last")


def _raw_call(pipe: Any, device: str, size: int, steps: int, batch: int, **extra: Any) -> None:
    import torch

    generators = [torch.Generator(device).manual_seed(42 + index) for index in range(batch)]
    pipe(prompt=[PROMPT] * batch, negative_prompt=[""] * batch, width=size, height=size,
         num_inference_steps=steps, guidance_scale=7.5, generator=generators,
         **extra)  # fmt: skip


def _timed(cuda: bool, work: Callable[[], object]) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _batches(
    timer: Callable[[Callable[[], object]], float],
    call: Callable[..., None],
    steps: int,
    what: str,
) -> float:
    """Per batch size: an untimed call, then the median of two. The batch-8 median back."""
    measured = {}
    for batch in BATCHES:
        timer(functools.partial(call, batch))
        seconds = statistics.median(timer(functools.partial(call, batch)) for _ in range(2))
        measured[batch] = seconds
        say(f"raw, {what}: batch {batch:2d}: {seconds:.3f} s a call, {batch / seconds:.2f} img/s,"
            f" {1000 * seconds / steps:.1f} ms a step")  # fmt: skip
    return measured[PROFILED_BATCH]


def _denoising_share(
    timer: Callable[[Callable[[], object]], float], call: Callable[..., None], whole: float
) -> None:
    latents = statistics.median(
        timer(functools.partial(call, PROFILED_BATCH, output_type="latent")) for _ in range(2)
    )
    say(f"raw, batch {PROFILED_BATCH}: denoising alone {latents:.3f} s of {whole:.3f} s"
        f" (VAE decode and the rest {whole - latents:.3f} s)")  # fmt: skip


def _profile(call: Callable[..., None], cuda: bool) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    started = time.perf_counter()
    with profile(activities=activities) as trace:
        call(PROFILED_BATCH)
        if cuda:
            import torch

            torch.cuda.synchronize()
    wall = time.perf_counter() - started
    events = trace.key_averages()
    if cuda:
        from torch.autograd import DeviceType

        # The kernels' own rows (the operators' rows count the same time again).
        kernels = [event for event in events if event.device_type == DeviceType.CUDA]
        busy = sum(event.self_device_time_total for event in kernels) / 1e6
        say(f"profile, batch {PROFILED_BATCH}: kernels {busy:.3f} s of the call's {wall:.3f} s"
            " under the profiler, which slows the CPU side; compare the kernels' time with the"
            " unprofiled call's above")  # fmt: skip
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    say(events.table(sort_by=key, row_limit=14, max_name_column_width=60))


def _engine(
    spec: Any,
    device: str,
    size: int,
    steps: int,
    timer: Callable[[Callable[[], object]], float],
    raw_batch: float,
) -> None:
    from sdserve.canonical import GenerationRequest
    from sdserve.engine.generate import EngineOptions, generate
    from sdserve.engine.pipelines import load_pipelines

    pipes = load_pipelines(spec, device)
    request = GenerationRequest(model="sd1", prompt=PROMPT, width=size, height=size,
                                guidance_scale=7.5, num_inference_steps=steps,
                                num_outputs=PROFILED_BATCH, prompt_strength=1.0,
                                scheduler="K-LMS", seed=42)  # fmt: skip
    options = EngineOptions(nsfw_check=False)

    def run() -> None:
        generate(pipes, request, lambda done, total: None, options)

    timer(run)
    seconds = statistics.median(timer(run) for _ in range(2))
    say(f"engine, one request of {PROFILED_BATCH} images: {seconds:.3f} s,"
        f" x{seconds / raw_batch:.3f} the raw batch-{PROFILED_BATCH} call")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
