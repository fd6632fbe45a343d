"""Tiny randomly initialised SD 2.x (768-v) and SDXL pipelines, built offline: what the tests and
benchmarks run for those two families, as random_model.py's pipeline stands in for SD 1.x.

Each keeps what sets its family apart in diffusers (configs, parts, prediction type, default
size) and shrinks everything else to SD 1.x tiny's scale.
"""

from __future__ import annotations

import copy
from pathlib import Path

# Imported from their modules: mypy reads diffusers' root lazy-import stubs as dummy classes.
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdserve.demo.architecture import BOS, EOS
from tests.models.random_model import save_random_pipeline, tiny_vae

_LATENT_CHANNELS = 4
_SD2_TEXT_WIDTH = 64
# SDXL's two encoders must differ in width, as CLIP-L (768) and bigG (1280) do: diffusers'
# single-file loader tells their weights apart by it.
_CLIP_L_WIDTH = 32
_CLIP_G_WIDTH = 64
_CLIP_G_PROJECTION = 32
# Ten layers, so that the key diffusers recognises an SDXL checkpoint by (resblocks.9) exists.
_CLIP_G_LAYERS = 10
_TIME_EMBED = 8
_TIME_IDS = 6  # SDXL's size conditioning: original height, width, crop top, left, target h, w


def build_random_sd2(path: Path, seed: int = 0) -> None:
    """Create a tiny random SD 2.x 768-v pipeline in diffusers format at `path`, atomically."""
    save_random_pipeline(path, seed, _sd2_pipeline)


def build_random_sdxl(path: Path, seed: int = 0) -> None:
    """Create a tiny random SDXL base pipeline in diffusers format at `path`, atomically."""
    save_random_pipeline(path, seed, _sdxl_pipeline)


def _sd2_pipeline(tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    # OpenCLIP ViT-H, SD 2.x's text encoder, uses exact GELU where OpenAI's CLIP uses quick GELU.
    encoder = CLIPTextModel(_text_config(tokenizer, _SD2_TEXT_WIDTH, layers=2, hidden_act="gelu"))
    # SD 2.1's own scheduler config: DDIM, predicting v (the velocity), not the noise.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    # diffusers annotates the optional parts as required.
    return StableDiffusionPipeline(
        vae=tiny_vae(_LATENT_CHANNELS, sample_size=256),
        text_encoder=encoder,
        tokenizer=tokenizer,
        # 96 latents: 768 pixels, the 768-v model's default size.
        unet=_unet(sample_size=96, cross_attention_dim=_SD2_TEXT_WIDTH),
        scheduler=scheduler,
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )


def _sdxl_pipeline(tokenizer: CLIPTokenizer) -> StableDiffusionXLPipeline:
    # SDXL's second tokenizer pads with "!" where the first pads with the end token.
    tokenizer_2 = copy.deepcopy(tokenizer)
    tokenizer_2.pad_token = "!"
    encoder = CLIPTextModel(_text_config(tokenizer, _CLIP_L_WIDTH, layers=2))
    encoder_2 = CLIPTextModelWithProjection(
        _text_config(
            tokenizer_2,
            _CLIP_G_WIDTH,
            layers=_CLIP_G_LAYERS,
            hidden_act="gelu",
            projection_dim=_CLIP_G_PROJECTION,
        )
    )
    vae = tiny_vae(_LATENT_CHANNELS, sample_size=256)
    # SDXL's VAE overflows in float16; with this set the pipelines decode in float32.
    vae.register_to_config(force_upcast=True)  # type: ignore[no-untyped-call]
    unet = _unet(
        sample_size=128,  # 1024 pixels, SDXL's default size
        # SDXL attends to both encoders' penultimate hidden states, side by side.
        cross_attention_dim=_CLIP_L_WIDTH + _CLIP_G_WIDTH,
        transformer_layers_per_block=(1, 1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        projection_class_embeddings_input_dim=_CLIP_G_PROJECTION + _TIME_IDS * _TIME_EMBED,
    )
    # SDXL base's own scheduler config.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        # A watermark would change the pixels depending on whether a package is installed.
        add_watermarker=False,
    )


def _text_config(
    tokenizer: CLIPTokenizer,
    width: int,
    layers: int,
    hidden_act: str = "quick_gelu",
    projection_dim: int | None = None,
) -> CLIPTextConfig:
    vocab = tokenizer.get_vocab()
    return CLIPTextConfig(
        hidden_size=width,
        intermediate_size=width * 2,
        num_attention_heads=4,
        num_hidden_layers=layers,
        hidden_act=hidden_act,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or width,
        vocab_size=len(vocab),
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=tokenizer.pad_token_id,
    )


def _unet(
    sample_size: int,
    cross_attention_dim: int,
    transformer_layers_per_block: int | tuple[int, ...] = 1,
    addition_embed_type: str | None = None,
    addition_time_embed_dim: int | None = None,
    projection_class_embeddings_input_dim: int | None = None,
) -> UNet2DConditionModel:
    # SD 1.x tiny's shape, attention at the two smaller sizes only: even the families' default
    # sizes (768, 1024) stay affordable on a CPU. Both families project linearly into attention.
    unet: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        transformer_layers_per_block=transformer_layers_per_block,
        attention_head_dim=8,
        norm_num_groups=16,
        use_linear_projection=True,
        addition_embed_type=addition_embed_type,
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
    )
    return unet
