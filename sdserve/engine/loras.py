"""Applying a LoRA to one request only, through diffusers' own LoRA loading."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)

_ADAPTER = "sdserve-request"


class LoraLoadError(ValueError):
    """A LoRA file that diffusers cannot apply to the model; the message names the LoRA."""


@contextmanager
def applied_lora(pipe: StableDiffusionPipeline, path: Path | None, scale: float) -> Iterator[None]:
    """Within the block, `pipe`'s UNet and text encoder carry the LoRA at `path`, at `scale`.

    The txt2img, img2img and inpaint pipelines share these modules, so one `pipe` serves all
    three. On leaving, by return, error or cancel, the LoRA layers are removed again and the
    model computes exactly what it computed before.
    """
    if path is None:
        yield
        return
    try:
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=_ADAPTER)
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            raise LoraLoadError(
                f"LoRA {path.stem!r} cannot be applied to this model: {error}"
            ) from error
        pipe.set_adapters([_ADAPTER], adapter_weights=[scale])
        yield
    finally:
        # Unloaded, not disabled: the model's modules are then the very ones it had before.
        pipe.unload_lora_weights()  # type: ignore[no-untyped-call]
