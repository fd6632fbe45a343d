"""A tiny randomly initialised Stable Diffusion, built offline: what the tests and benchmarks run
when what the image shows does not matter (it draws noise), at the smallest cost."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

# Imported from their modules: mypy reads diffusers' root lazy-import stubs as dummy classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

from sdserve.demo.architecture import BOS, EOS, scheduler, text_encoder
from sdserve.families import FamilyName

_MAX_TOKENS = 77
_LATENT_CHANNELS = 4


def _write_tokenizer_files(folder: Path) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges, so it needs no download."""
    chars = ByteLevel.alphabet()
    tokens = sorted(chars) + sorted(c + "</w>" for c in chars) + [BOS, EOS]
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=_MAX_TOKENS)


def _unet() -> UNet2DConditionModel:
    unet: UNet2DConditionModel = UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        sample_size=64,  # x 8 = 512, the default size, as on SD 1.5
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return unet


def tiny_vae(latent_channels: int, *, sample_size: int, flow: bool = False) -> AutoencoderKL:
    """A random VAE calibrated as a trained one: SD's (`flow` False, latents normalised by a
    scale) or SD3's and FLUX's (no quant convs, latents shifted and scaled)."""
    # Four blocks give a scale factor of 8, like the real ones, so sizes and latents behave the
    # same.
    vae: AutoencoderKL = AutoencoderKL(
        block_out_channels=[8, 16, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=sample_size,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
    )
    # The layer whose output is the posterior: latent means, then log-variances.
    moments = vae.encoder.conv_out if flow else vae.quant_conv
    assert moments is not None and moments.bias is not None  # nn.Conv2d's default
    with torch.no_grad():
        # A trained encoder is nearly certain of its latents (posterior std near 0); a random
        # one's std of about 1 would bury the init image under noise at any prompt_strength.
        moments.bias[latent_channels:] = -20.0
        probe = torch.rand(4, 3, 64, 64) * 2 - 1
        latents = vae.encode(probe).latent_dist.mean
    # The real models' normalisation was measured this way (SD: 1 / the latents' std; SD3 and
    # FLUX: their mean as well), so a given prompt_strength noises the init image as much.
    normalisation = {"scaling_factor": 1 / latents.std().item()}
    if flow:
        normalisation["shift_factor"] = latents.mean().item()
    vae.register_to_config(**normalisation)  # type: ignore[no-untyped-call]
    return vae


def build_random_pipeline(path: Path, seed: int = 0) -> None:
    """Create a tiny random SD pipeline in diffusers format at `path`, atomically."""
    save_random_pipeline(path, seed, _random_pipeline)


def save_random_pipeline(
    path: Path, seed: int, make: Callable[[CLIPTokenizer], DiffusionPipeline]
) -> None:
    """Save the pipeline `make` builds (given the local CLIP tokenizer) at `path`, atomically;
    its random weights depend on `seed` alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Built next to `path` so that the final rename stays on one filesystem and is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tokenizer = _write_tokenizer_files(staging)
        # fork_rng: seeding here must not change the random numbers the caller sees afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipe = make(tokenizer)
        model_dir = staging / "model"
        pipe.save_pretrained(model_dir, safe_serialization=True)
        model_dir.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _random_pipeline(tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    # diffusers annotates `scheduler` as an enum and the optional parts as required.
    return StableDiffusionPipeline(
        vae=tiny_vae(_LATENT_CHANNELS, sample_size=256),
        text_encoder=text_encoder(tokenizer, layers=2, mlp_ratio=2),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=scheduler(),  # type: ignore[arg-type]
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )


def build_random_family(path: Path, family: FamilyName, seed: int = 0) -> None:
    """Create a tiny random pipeline of `family` in diffusers format at `path`."""
    # Imported here: those modules build on this one's tokenizer and VAE.
    from tests.models.random_flow import build_random_flux, build_random_sd3
    from tests.models.random_unet import build_random_sd2, build_random_sdxl

    builders: dict[FamilyName, Callable[[Path, int], None]] = {
        "sd1": build_random_pipeline,
        "sd2": build_random_sd2,
        "sdxl": build_random_sdxl,
        "sd3": build_random_sd3,
        "flux-dev": build_random_flux,
        "flux-schnell": functools.partial(build_random_flux, guidance_distilled=False),
    }
    builders[family](path, seed)
