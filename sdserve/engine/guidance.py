"""Guidance that stops part-way: diffusers' CFG cutoff callback, for every SD mode and batch."""

from __future__ import annotations

from typing import Any

from diffusers.callbacks import SDCFGCutoffCallback


def _conditional(tensor: Any) -> Any:
    """The conditional half of a batch doubled for guidance (unconditional rows come first)."""
    return tensor[tensor.shape[0] // 2 :]


class _BatchCutoff(SDCFGCutoffCallback):
    """diffusers' cutoff keeps the last row of the doubled prompt embeddings (`[-1:]`), which is
    the conditional half of one image only: a call making several images kept one prompt for
    all of them and failed at the cutoff step. This one keeps the whole conditional half."""

    def callback_fn(
        self, pipeline: Any, step_index: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        ratio: float = self.config["cutoff_step_ratio"]
        if step_index == int(pipeline.num_timesteps * ratio):
            for name in self.tensor_inputs:
                kwargs[name] = _conditional(kwargs[name])
            pipeline._guidance_scale = 0.0
        return kwargs


class _InpaintCutoff(_BatchCutoff):
    """The cutoff for inpainting: its mask and masked-image latents are doubled for guidance
    too, and must drop to one copy with the prompt embeddings."""

    tensor_inputs = ["prompt_embeds", "mask", "masked_image_latents"]  # noqa: RUF012 (diffusers' own)


def guidance_cutoff(ratio: float, inpaint: bool) -> SDCFGCutoffCallback:
    """A step callback that turns classifier-free guidance off after `ratio` of the steps."""
    callback: SDCFGCutoffCallback = (_InpaintCutoff if inpaint else _BatchCutoff)(
        cutoff_step_ratio=ratio
    )
    return callback
