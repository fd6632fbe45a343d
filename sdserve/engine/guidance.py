"""Guidance that stops part-way: diffusers' CFG cutoff callback, for every SD mode and batch."""

from __future__ import annotations

from typing import Any

from diffusers.callbacks import SDCFGCutoffCallback


class _Cutoff(SDCFGCutoffCallback):
    """diffusers' cutoff, for batches too: its own keeps `prompt_embeds[-1:]`, the conditional
    embedding of one image, which fails a call of several images at the cutoff step. Guidance
    doubles each input, unconditional half first: the conditional half stays."""

    def callback_fn(
        self, pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        ratio: float = self.config["cutoff_step_ratio"]
        if step_index == int(pipeline.num_timesteps * ratio):
            for name in self.tensor_inputs:
                kwargs[name] = kwargs[name].chunk(2)[1]
            pipeline._guidance_scale = 0.0
        return kwargs


class _InpaintCutoff(_Cutoff):
    """The cutoff for inpainting: its mask and masked-image latents are doubled for guidance
    too, and must drop to one copy with the prompt embeddings."""

    tensor_inputs = ["prompt_embeds", "mask", "masked_image_latents"]  # noqa: RUF012 (diffusers' own)


def guidance_cutoff(ratio: float, inpaint: bool) -> SDCFGCutoffCallback:
    """A step callback that turns classifier-free guidance off after `ratio` of the steps."""
    callback: SDCFGCutoffCallback = (_InpaintCutoff if inpaint else _Cutoff)(
        cutoff_step_ratio=ratio
    )
    return callback
