"""Tiny randomly initialised flow-matching pipelines (SD3, FLUX.1), built offline: what tests and
benchmarks run to exercise those families' code paths when what the image shows does not matter.

The same classes and configs as the real models, scaled down: every part a real checkpoint has
(two or three text encoders, the T5 tokenizer, a 16-channel VAE without quant convs, a
FlowMatchEuler scheduler) is here, so loading, LoRAs and img2img take the real code paths.
"""

from __future__ import annotations

from pathlib import Path

# Imported from their modules: mypy reads diffusers' root lazy-import stubs as dummy classes.
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    StableDiffusion3Pipeline,
)
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    # transformers 5's T5Tokenizer is the `tokenizers`-backed class 4.x called T5TokenizerFast
    # (which 5 keeps as an alias): the kind that needs no sentencepiece.
    T5Tokenizer,
)

from sdserve.demo.architecture import BOS, EOS
from tests.models.random_model import save_random_pipeline, tiny_vae

_LATENT_CHANNELS = 16
_CLIP_WIDTH = 32
# SD3 pads its two CLIP encoders' hidden states, side by side, to T5's width: it must hold both.
_T5_WIDTH = 2 * _CLIP_WIDTH
# Real T5 tokenizers' limit; FLUX pads every prompt to 512 T5 tokens, SD3 to 256.
_T5_MAX_TOKENS = 512
_PAD, _END, _UNK = "<pad>", "</s>", "<unk>"
# sentencepiece's word-start marker, which T5's vocabulary spells words with.
_WORD_START = "\u2581"


def build_random_sd3(path: Path, seed: int = 0) -> None:
    """Create a tiny random SD3 pipeline in diffusers format at `path`, atomically."""
    save_random_pipeline(path, seed, _random_sd3)


def build_random_flux(path: Path, seed: int = 0, *, guidance_distilled: bool = True) -> None:
    """Create a tiny random FLUX.1 pipeline at `path`, atomically: dev-like when
    `guidance_distilled` (guidance is an input of the transformer), else schnell-like."""
    save_random_pipeline(path, seed, lambda clip: _random_flux(clip, guidance_distilled))


def _random_sd3(clip_tokenizer: CLIPTokenizer) -> StableDiffusion3Pipeline:
    t5_tokenizer = _t5_tokenizer()
    clip_config = _clip_config(clip_tokenizer)
    heads, head_width = 4, 8
    transformer: SD3Transformer2DModel = SD3Transformer2DModel(
        sample_size=128,  # x 8 = 1024, SD3's default image size
        patch_size=2,
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=head_width,
        num_attention_heads=heads,
        joint_attention_dim=_T5_WIDTH,
        caption_projection_dim=heads * head_width,  # text tokens join the image's attention
        pooled_projection_dim=2 * _CLIP_WIDTH,  # both CLIPs' pooled embeddings, side by side
        pos_embed_max_size=96,  # SD3's: images up to 96 patches (1536 pixels) a side
    )
    # SD3's scheduler_config.json; the shift spends more of the steps at high noise.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    # diffusers annotates the optional image encoder parts as required.
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=tiny_vae(_LATENT_CHANNELS, sample_size=1024, flow=True),
        text_encoder=CLIPTextModelWithProjection(clip_config),
        tokenizer=clip_tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_config),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=_t5_encoder(t5_tokenizer),
        tokenizer_3=t5_tokenizer,
        image_encoder=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
    )


def _random_flux(clip_tokenizer: CLIPTokenizer, guidance_distilled: bool) -> FluxPipeline:
    t5_tokenizer = _t5_tokenizer()
    transformer: FluxTransformer2DModel = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * _LATENT_CHANNELS,  # FLUX packs 2x2 latent patches into one token
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_T5_WIDTH,
        pooled_projection_dim=_CLIP_WIDTH,
        guidance_embeds=guidance_distilled,
        axes_dims_rope=(4, 6, 6),  # must add up to attention_head_dim
    )
    # FLUX.1-dev's and FLUX.1-schnell's scheduler_config.json: dev shifts by image size.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if guidance_distilled else 1.0,
        use_dynamic_shifting=guidance_distilled,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(_LATENT_CHANNELS, sample_size=1024, flow=True),
        text_encoder=CLIPTextModel(_clip_config(clip_tokenizer)),
        tokenizer=clip_tokenizer,
        text_encoder_2=_t5_encoder(t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
        image_encoder=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
    )


def _t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer with one token per printable Latin-1 character, built with `tokenizers`: no
    download, and no sentencepiece model to convert."""
    chars = [chr(c) for c in (*range(0x21, 0x7F), *range(0xA1, 0x100))]
    vocab = [(_PAD, 0.0), (_END, 0.0), (_UNK, 0.0), (_WORD_START, -2.0)]
    vocab += [(c, -3.0) for c in chars]
    backend = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    # T5's own pipeline: split at spaces, mark word starts, end every text with </s>.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always"),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", _END], pair=["$A", _END, "$B", _END], special_tokens=[(_END, 1)]
    )
    tokenizer: T5Tokenizer = T5Tokenizer(
        tokenizer_object=backend,
        eos_token=_END,
        unk_token=_UNK,
        pad_token=_PAD,
        extra_ids=0,
        model_max_length=_T5_MAX_TOKENS,
    )
    return tokenizer


def _clip_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    vocab = tokenizer.get_vocab()
    return CLIPTextConfig(
        hidden_size=_CLIP_WIDTH,
        intermediate_size=2 * _CLIP_WIDTH,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=_CLIP_WIDTH,
        vocab_size=len(vocab),
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )


def _t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=_T5_WIDTH,
        d_kv=16,
        d_ff=2 * _T5_WIDTH,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",  # T5 v1.1, the version SD3 and FLUX use
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)
