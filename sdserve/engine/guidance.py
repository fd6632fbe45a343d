"""Guidance that stops part-way: diffusers' CFG cutoff callback, for every SD mode."""

from __future__ import annotations

from typing import Any

from diffusers.callbacks import SDCFGCutoffCallback


class _InpaintCutoff(SDCFGCutoffCallback):
    """The cutoff for inpainting: its mask and masked-image latents are doubled for guidance
    too, and must drop to one copy with the prompt embeddings."""

    tensor_inputs = ["prompt_embeds", "mask", "masked_image_latents"]  # noqa: RUF012 (diffusers' own)

    def callback_fn(
        self, pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        ratio: float = self.config["cutoff_step_ratio"]
        if step_index == int(pipeline.num_timesteps * ratio):
            kwargs["mask"] = kwargs["mask"][-1:]
            kwargs["masked_image_latents"] = kwargs["masked_image_latents"][-1:]
        result: dict[str, Any] = super().callback_fn(pipeline, step_index, timestep, kwargs)
        return result


def guidance_cutoff(ratio: float, inpaint: bool) -> SDCFGCutoffCallback:
    """A step callback that turns classifier-free guidance off after `ratio` of the steps."""
    callback: SDCFGCutoffCallback = (_InpaintCutoff if inpaint else SDCFGCutoffCallback)(
        cutoff_step_ratio=ratio
    )
    return callback
