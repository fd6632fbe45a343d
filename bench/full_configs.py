"""Random-weight pipelines with the real architectures of the families sdserve serves.

The configs are those of the released models' config.json files (SD 1.5, SD 2.1 768-v, SDXL
base 1.0, SD3 medium, FLUX.1 dev and schnell); only the tokenizers are local stand-ins (the
byte-level CLIP one of sdserve's tiny models, a character-level T5 one), so nothing is
downloaded. The weights are random: the images are noise, but every call does the real work.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Imported from their modules: mypy reads diffusers' root lazy-import stubs as dummy classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    StableDiffusion3Pipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel, T5EncoderModel

from sdserve.families import FamilyName
from tests.models.random_flow import _t5_tokenizer
from tests.models.random_model import _write_tokenizer_files

Config = dict[str, Any]

# --- text encoders -------------------------------------------------------------------------
# The real configs' token ids (0, 2, 1) suit the local tokenizer too: with eos_token_id 2
# CLIP pools at the highest id, which is its end token in both vocabularies.
_CLIP = {"vocab_size": 49408, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
         "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}  # fmt: skip
CLIP_L = {**_CLIP, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
          "num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
"""OpenAI CLIP ViT-L/14's text encoder: SD 1.x, SDXL's first, SD3's first, FLUX's CLIP."""
OPENCLIP_H = {**_CLIP, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
              "num_hidden_layers": 23, "projection_dim": 512, "hidden_act": "gelu"}  # fmt: skip
"""OpenCLIP ViT-H/14's text encoder less its last layer, as SD 2.x ships it."""
CLIP_G = {**_CLIP, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
          "num_hidden_layers": 32, "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip
"""OpenCLIP ViT-bigG/14's text encoder: SDXL's and SD3's second."""
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
          "num_heads": 64, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
          "dropout_rate": 0.1, "pad_token_id": 0, "eos_token_id": 1,
          "tie_word_embeddings": False}  # fmt: skip
"""google/t5-v1_1-xxl's encoder: SD3's third text encoder, FLUX's second."""

# --- VAEs ----------------------------------------------------------------------------------
_VAE = {"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2,
        "norm_num_groups": 32, "latent_channels": 4, "sample_size": 512}  # fmt: skip
SD_VAE = {**_VAE, "scaling_factor": 0.18215}
SD2_VAE = {**SD_VAE, "sample_size": 768}
SDXL_VAE = {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
_FLOW_VAE = {**_VAE, "sample_size": 1024, "latent_channels": 16, "use_quant_conv": False,
             "use_post_quant_conv": False, "force_upcast": True}  # fmt: skip
SD3_VAE = {**_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
FLUX_VAE = {**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}

# --- denoisers -----------------------------------------------------------------------------
_SD_UNET = {"in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
            "layers_per_block": 2, "norm_num_groups": 32,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}  # fmt: skip
SD15_UNET = {**_SD_UNET, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SD21_UNET = {**_SD_UNET, "sample_size": 96, "cross_attention_dim": 1024,
             "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
             "upcast_attention": True}  # fmt: skip
SDXL_UNET = {"in_channels": 4, "out_channels": 4, "sample_size": 128,
             "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
             "norm_num_groups": 32, "cross_attention_dim": 2048,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
             "use_linear_projection": True, "addition_embed_type": "text_time",
             "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816}  # fmt: skip
SD3_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16,
              "num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24,
              "joint_attention_dim": 4096, "caption_projection_dim": 1536,
              "pooled_projection_dim": 2048, "pos_embed_max_size": 192}  # fmt: skip
FLUX_1 = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
          "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
          "pooled_projection_dim": 768, "guidance_embeds": True,
          "axes_dims_rope": [16, 56, 56]}  # fmt: skip

# --- schedulers (each model's scheduler_config.json) ---------------------------------------
_SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "steps_offset": 1}  # fmt: skip
SD15_SCHEDULER = {**_SD_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False}
SD21_SCHEDULER = {**_SD_BETAS, "clip_sample": False, "set_alpha_to_one": False,
                  "prediction_type": "v_prediction"}  # fmt: skip
SDXL_SCHEDULER = {**_SD_BETAS, "prediction_type": "epsilon", "interpolation_type": "linear",
                  "timestep_spacing": "leading", "use_karras_sigmas": False}  # fmt: skip
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_DEV_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                      "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                      "max_image_seq_len": 4096}  # fmt: skip
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}


@dataclass(frozen=True)
class Architecture:
    """A pipeline class and what goes into it: models by component name, tokenizers by kind."""

    pipeline: type
    models: dict[str, tuple[type, Config]]
    tokenizers: dict[str, str]
    """Component name: `clip`, `clip-g` (pads with `!`, as bigG's tokenizers) or `t5`."""
    scheduler: tuple[type, Config]
    options: dict[str, Any] = field(default_factory=dict)


_NO_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
_NO_IMAGE_ENCODER = {"image_encoder": None, "feature_extractor": None}

ARCHITECTURES: dict[FamilyName, Architecture] = {
    "sd1": Architecture(
        StableDiffusionPipeline,
        {"unet": (UNet2DConditionModel, SD15_UNET), "vae": (AutoencoderKL, SD_VAE),
         "text_encoder": (CLIPTextModel, CLIP_L)},
        {"tokenizer": "clip"},
        (PNDMScheduler, SD15_SCHEDULER),
        _NO_CHECKER,
    ),
    "sd2": Architecture(
        StableDiffusionPipeline,
        {"unet": (UNet2DConditionModel, SD21_UNET), "vae": (AutoencoderKL, SD2_VAE),
         "text_encoder": (CLIPTextModel, OPENCLIP_H)},
        {"tokenizer": "clip"},
        (DDIMScheduler, SD21_SCHEDULER),
        _NO_CHECKER,
    ),
    "sdxl": Architecture(
        StableDiffusionXLPipeline,
        {"unet": (UNet2DConditionModel, SDXL_UNET), "vae": (AutoencoderKL, SDXL_VAE),
         "text_encoder": (CLIPTextModel, CLIP_L),
         "text_encoder_2": (CLIPTextModelWithProjection, CLIP_G)},
        {"tokenizer": "clip", "tokenizer_2": "clip-g"},
        (EulerDiscreteScheduler, SDXL_SCHEDULER),
        # A watermark would make the run depend on whether its package is installed.
        {"force_zeros_for_empty_prompt": True, "add_watermarker": False},
    ),
    "sd3": Architecture(
        StableDiffusion3Pipeline,
        {"transformer": (SD3Transformer2DModel, SD3_MEDIUM), "vae": (AutoencoderKL, SD3_VAE),
         "text_encoder": (CLIPTextModelWithProjection, CLIP_L),
         "text_encoder_2": (CLIPTextModelWithProjection, CLIP_G),
         "text_encoder_3": (T5EncoderModel, T5_XXL)},
        {"tokenizer": "clip", "tokenizer_2": "clip-g", "tokenizer_3": "t5"},
        (FlowMatchEulerDiscreteScheduler, SD3_SCHEDULER),
        _NO_IMAGE_ENCODER,
    ),
    "flux-dev": Architecture(
        FluxPipeline,
        {"transformer": (FluxTransformer2DModel, FLUX_1), "vae": (AutoencoderKL, FLUX_VAE),
         "text_encoder": (CLIPTextModel, CLIP_L), "text_encoder_2": (T5EncoderModel, T5_XXL)},
        {"tokenizer": "clip", "tokenizer_2": "t5"},
        (FlowMatchEulerDiscreteScheduler, FLUX_DEV_SCHEDULER),
        _NO_IMAGE_ENCODER,
    ),
    "flux-schnell": Architecture(
        FluxPipeline,
        {"transformer": (FluxTransformer2DModel, {**FLUX_1, "guidance_embeds": False}),
         "vae": (AutoencoderKL, FLUX_VAE), "text_encoder": (CLIPTextModel, CLIP_L),
         "text_encoder_2": (T5EncoderModel, T5_XXL)},
        {"tokenizer": "clip", "tokenizer_2": "t5"},
        (FlowMatchEulerDiscreteScheduler, FLUX_SCHNELL_SCHEDULER),
        _NO_IMAGE_ENCODER,
    ),
}  # fmt: skip


def build_full_family(
    path: Path, family: FamilyName, device: str, dtype: torch.dtype, seed: int = 0
) -> None:
    """Save a random-weight pipeline of `family`'s real architecture at `path`, in `dtype`."""
    with tempfile.TemporaryDirectory(prefix="sdserve-tokenizer-") as scratch:
        torch.manual_seed(seed)
        pipe = assemble(family, device, dtype, Path(scratch))
        pipe.save_pretrained(path, safe_serialization=True)


def assemble(family: FamilyName, device: str, dtype: torch.dtype, scratch: Path) -> Any:
    """A random-weight pipeline of `family`'s real architecture on `device`; its CLIP
    tokenizer's files are written to `scratch`, which must outlive the pipeline's saving."""
    architecture = ARCHITECTURES[family]
    clip = _write_tokenizer_files(scratch)
    components: dict[str, Any] = {
        name: _tokenizer(kind, clip) for name, kind in architecture.tokenizers.items()
    }
    # Initialised where they will run: a 12 B-parameter transformer initialises in seconds on a
    # GPU, in minutes on a CPU.
    with torch.device(device):
        for name, (model_class, config) in architecture.models.items():
            # nn.Module's own cast: diffusers' override warns of modules to keep in float32
            # even when it finds none. Loading casts again anyway, as the server asks.
            components[name] = torch.nn.Module.to(make_model(model_class, config), dtype)
    scheduler_class, scheduler_config = architecture.scheduler
    scheduler = scheduler_class(**scheduler_config)
    return architecture.pipeline(**components, scheduler=scheduler, **architecture.options)


def make_model(model_class: type, config: Config) -> torch.nn.Module:
    """A randomly initialised diffusers or transformers model of `config`."""
    if issubclass(model_class, PreTrainedModel):
        model: torch.nn.Module = model_class(model_class.config_class(**config))
    else:
        model = model_class(**config)
    return model.eval()


def _tokenizer(kind: str, clip: Any) -> Any:
    if kind == "t5":
        return _t5_tokenizer()
    if kind == "clip-g":
        padded = copy.deepcopy(clip)
        padded.pad_token = "!"
        return padded
    return clip
