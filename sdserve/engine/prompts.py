"""Prompt weighting: prompts parsed with compel's syntax into the embeddings the pipelines take."""

from __future__ import annotations

import torch
from compel import Compel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)


def weighted_embeddings(
    pipe: StableDiffusionPipeline, prompt: str, negative_prompt: str
) -> dict[str, torch.Tensor]:
    """`prompt_embeds` and `negative_prompt_embeds` for `pipe`, weighted as compel reads them."""
    # Not truncated: prompts past CLIP's 77 tokens go in 77-token chunks, as in A1111. Compel
    # pads both prompts to one length, which the pipelines require of the two embeddings.
    compel = Compel(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False
    )
    embeddings = compel([prompt, negative_prompt])
    return {"prompt_embeds": embeddings[0:1], "negative_prompt_embeds": embeddings[1:2]}
