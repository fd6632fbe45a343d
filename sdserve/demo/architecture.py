"""The demo model's parts: Stable Diffusion's architecture, scaled down to its small world.

The same classes as any SD 1.x model (CLIPTokenizer, CLIPTextModel, UNet2DConditionModel,
AutoencoderKL), so it loads and runs through exactly the code real models take.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

# Imported from their modules: mypy reads diffusers' root lazy-import stubs as dummy classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdserve.demo.scenes import CANVAS, vocabulary

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_TOKENS = 24
"""Captions are short; longer prompts are truncated, as SD truncates at 77."""
LATENT_CHANNELS = 4
VAE_FACTOR = 4
TEXT_WIDTH = 64


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges spell each caption word as one token; any other text
    still tokenizes, byte by byte."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = ByteLevel.alphabet()
    tokens = sorted(chars) + sorted(c + "</w>" for c in chars)
    ranks: dict[tuple[str, str], int] = {}
    for word in vocabulary():
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        while len(pieces) > 1:  # teach it the next merge this word needs
            ranks[(pieces[0], pieces[1])] = len(ranks)
            tokens.append(pieces[0] + pieces[1])
            pieces = _bpe(pieces, ranks)
    tokens += [BOS, EOS]
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in ranks)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS
    )


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one word: apply the best-ranked known merge until none."""
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairwise(pieces))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def text_encoder(
    tokenizer: CLIPTokenizer, layers: int = 3, width: int = TEXT_WIDTH, mlp_ratio: int = 4
) -> CLIPTextModel:
    """A CLIP text encoder for `tokenizer`, as long as its `model_max_length`."""
    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=width * mlp_ratio,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=width,
        vocab_size=len(vocab),
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(config)


def unet() -> UNet2DConditionModel:
    # Attention (self and cross) at 8x8 and 4x4 only: enough to place and colour one shape,
    # and a third of the cost of attending at the full latent size on a CPU.
    model: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=CANVAS // VAE_FACTOR,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return model


def vae() -> AutoencoderKL:
    # Three blocks: a scale factor of 4, so 64x64 images are 16x16 latents.
    model: AutoencoderKL = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=[16, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=CANVAS,
    )
    return model


def scheduler() -> LMSDiscreteScheduler:
    """SD 1.x's training noise schedule, so every sampler behaves as on a real model."""
    made: LMSDiscreteScheduler = LMSDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
    )
    return made


def assemble(
    vae_model: AutoencoderKL,
    encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet_model: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    # diffusers annotates `scheduler` as an enum and the optional parts as required.
    return StableDiffusionPipeline(
        vae=vae_model,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet_model,
        scheduler=scheduler(),  # type: ignore[arg-type]
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
