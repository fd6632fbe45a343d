"""Prompt weighting: prompts parsed with compel's syntax into the embeddings the pipelines take."""

from __future__ import annotations

from typing import Any

import pyparsing
import torch
from compel import Compel, CompelForSDXL

from sdserve.families import FamilyName


def weighted_embeddings(
    pipe: Any, family: FamilyName, prompt: str, negative_prompt: str
) -> dict[str, torch.Tensor]:
    """The prompt embeddings of `pipe`, weighted as compel reads the prompts.

    Only families whose text encoders are all CLIP (SD 1.x, 2.x, SDXL); the API refuses
    compel for the others.
    """
    memoize_parsing()
    if family == "sdxl":
        # SDXL conditions on both encoders' hidden states and the second one's pooled output.
        conditioning = CompelForSDXL(pipe)(main_prompt=prompt, negative_prompt=negative_prompt)
        return {
            "prompt_embeds": conditioning.embeds,
            "pooled_prompt_embeds": conditioning.pooled_embeds,
            "negative_prompt_embeds": conditioning.negative_embeds,
            "negative_pooled_prompt_embeds": conditioning.negative_pooled_embeds,
        }
    # Not truncated: prompts past CLIP's 77 tokens go in 77-token chunks, as in A1111. Compel
    # pads both prompts to one length, which the pipelines require of the two embeddings.
    compel = Compel(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=False
    )
    embeddings = compel([prompt, negative_prompt])
    return {"prompt_embeds": embeddings[0:1], "negative_prompt_embeds": embeddings[1:2]}


def memoize_parsing() -> None:
    """Turn on pyparsing's packrat memo, which compel's prompt grammar needs to parse in time."""
    # Without it the grammar backtracks through nested parentheses: "(((((((a)))))))" took 37 s
    # and each further level about 4x longer (bench/compel_cost.py); with it, milliseconds.
    # Enabling it again is a no-op; the memo is cleared at the start of each parse.
    pyparsing.ParserElement.enable_packrat()
