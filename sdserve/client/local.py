"""`sdserve generate` without a server: the request checked as the server checks it, then made
in this process by the engine the workers run, into PNGs as the workers write them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sdserve.api.runpod_protocol import RunPodInput
from sdserve.canonical import GenerationRequest
from sdserve.client.progress import StepProgress
from sdserve.client.request import OPTION_OF, BadInput, GenerationFailed, Output
from sdserve.detect import UnservedModel
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.image_pool import ImagePool
from sdserve.jobs.requests import InputLimits, RequestDraft, build_request, request_warnings
from sdserve.logs import quiet_model_libraries
from sdserve.loras import LORA_SUFFIX
from sdserve.registry import DEFAULT_MODEL, ModelRegistry, ModelSpec, load_registry
from sdserve.settings import InvalidSettings, Settings, read_settings


def generate_here(
    model: str | None, device: str | None, wire: RunPodInput, progress: StepProgress
) -> list[Output]:
    """The images of `wire` on the default model: `model` (a SOURCE) if given, else the one
    `serve` would serve (SDSERVE_MODEL, SDSERVE_MODELS_FILE, else the built-in demo model)."""
    quiet_model_libraries()  # before anything imports them (reading a model's config may)
    lora_dir, wire = _lora_file(wire)
    flags = {
        "model": [f"{DEFAULT_MODEL}={model}"] if model else None,
        "device": device,
        "lora_dir": lora_dir,
    }
    try:
        settings = read_settings(flags)
        registry = load_registry(settings.models_file, settings.model)
    except (InvalidSettings, UnservedModel) as exc:
        raise BadInput([str(exc)]) from None
    spec = registry.resolve(DEFAULT_MODEL)
    assert spec is not None  # the registry always has a default model
    request = _request(settings, spec, wire)
    for warning in request_warnings(spec, request):
        progress.warn(warning)
    return _run(settings, registry, spec, request, progress)


def _lora_file(wire: RunPodInput) -> tuple[Path | None, RunPodInput]:
    """A `--lora` naming a .safetensors file: the file's folder is then the LoRA folder, and
    its stem the LoRA's name. Any other value names a LoRA of SDSERVE_LORA_DIR."""
    if wire.lora is None:
        return None, wire
    path = Path(wire.lora).expanduser()
    if path.suffix != LORA_SUFFIX or not path.is_file():
        return None, wire
    return path.parent, wire.model_copy(update={"lora": path.stem})


def _request(settings: Settings, spec: ModelSpec, wire: RunPodInput) -> GenerationRequest:
    """The canonical request, by the rules a server applies (errors name the options)."""
    # As the RunPod dialect submits it (its masks repaint black: see `mask_input`).
    draft = RequestDraft(model=DEFAULT_MODEL, mask_convention="black", **wire.model_dump())
    images = ImagePool(1)
    limits = InputLimits(
        settings.fetch_timeout_s,
        settings.fetch_max_bytes,
        settings.loras_dir,
        max_prompt_chars=settings.max_prompt_chars,
        compel_everywhere=settings.compel_everywhere,
        images=images,
    )
    try:
        return asyncio.run(build_request(spec, draft, OPTION_OF, limits))
    except InvalidInput as exc:
        raise BadInput([exc.message]) from None
    finally:
        images.close()


def _run(
    settings: Settings,
    registry: ModelRegistry,
    spec: ModelSpec,
    request: GenerationRequest,
    progress: StepProgress,
) -> list[Output]:
    # torch loads here and only here: a run through a server never comes this far.
    from sdserve.engine.cache import PipelineCache
    from sdserve.engine.speed import SpeedOptions
    from sdserve.worker.process import request_runner
    from sdserve.worker.runner import png_bytes

    speed = SpeedOptions(settings.compile, settings.channels_last, settings.fuse_qkv)
    try:
        cache = PipelineCache(settings.device, speed=speed)
    except ValueError as exc:
        raise BadInput([f"--device: {exc}"]) from None
    progress.waiting("loading the model")
    try:  # loaded here, as a worker does before its first job, to say why it cannot be
        cache.get(spec)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        message = f"could not load model {spec.name!r} from {spec.source}: {reason}"
        raise GenerationFailed(message) from None
    progress.waiting("encoding the prompt")
    try:
        made = request_runner(settings, registry, cache)([request], progress.step)[0]
    except ValueError as exc:  # the engine's refusals, meant for the person who asked
        raise GenerationFailed(str(exc)) from None
    progress.finished()
    return [
        Output(png=png_bytes(image.image, request, image.seed), seed=image.seed) for image in made
    ]
