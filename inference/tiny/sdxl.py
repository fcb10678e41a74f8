"""A tiny random-weight SDXL pipeline built entirely in code, for tests and for running the bot offline.

It has the real SDXL architecture (two CLIP text encoders whose hidden states are concatenated, pooled
text embeddings plus size/crop "time ids" as added conditioning, a 4-channel KL VAE) at toy widths, so
everything that loads, encodes prompts or samples with a real Animagine XL checkpoint runs the same code
on it. It makes 64x64 images in a fraction of a second on a CPU. The images are noise-like: the weights
are random.

The build is deterministic: every component is initialised from a fixed seed (inside a forked torch RNG,
so callers' random state is untouched), so every build has the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from inference.tiny.common import build_once, byte_alphabet

TINY_SDXL_NAME = "tiny-sdxl"
TINY_SDXL_SIZE = 64  # default image side in pixels (UNet sample_size 16 x VAE scale factor 4)

_SEED = 0
# The two text encoders have different widths, as in real SDXL (CLIP ViT-L 768, OpenCLIP bigG 1280).
# This matters beyond realism: diffusers' single-file loader tells the CLIP-L weights from the OpenCLIP
# ones by comparing position-embedding widths, so equal widths would load CLIP-L into both encoders.
_TEXT_WIDTH_1 = 32
_TEXT_WIDTH_2 = 64
_POOLED_WIDTH = 32  # text_encoder_2 projection_dim
_TIME_EMBED_DIM = 8  # addition_time_embed_dim; SDXL feeds 6 time ids
_MAX_TOKENS = 77  # CLIP's context window, as in the real model


def _tiny_tokenizer(pad_token: str) -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges: every character is one token.

    Real SDXL pads with "<|endoftext|>" in the first tokenizer and "!" in the second; we do the same.
    """
    alphabet = byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=_MAX_TOKENS)


def _text_config(tokenizer: CLIPTokenizer, hidden: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=_MAX_TOKENS,
        projection_dim=_POOLED_WIDTH,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooling picks the first EOS token (not the legacy argmax)
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """Build the tiny SDXL pipeline in memory (float32, CPU). Same weights on every call."""
    tokenizer = _tiny_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = _tiny_tokenizer(pad_token="!")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        unet = UNet2DConditionModel(
            sample_size=TINY_SDXL_SIZE // 4,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=_TEXT_WIDTH_1 + _TEXT_WIDTH_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _POOLED_WIDTH,
        )

        torch.manual_seed(_SEED)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            # Three levels: latents are 1/4 of the image side, so 64x64 images denoise 16x16 latents.
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 64),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=TINY_SDXL_SIZE,
            scaling_factor=0.13025,  # SDXL's VAE scaling factor
        )

        torch.manual_seed(_SEED)
        text_encoder = CLIPTextModel(_text_config(tokenizer, _TEXT_WIDTH_1))

        torch.manual_seed(_SEED)
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, _TEXT_WIDTH_2))

    # SDXL base's scheduler settings, with the sampler Animagine XL recommends.
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_tiny_sdxl(cache_dir: Path) -> Path:
    """The tiny SDXL model as a diffusers directory under `cache_dir`, built and saved on the first call."""
    return build_once(
        Path(cache_dir) / TINY_SDXL_NAME, "model_index.json", lambda staging: build_tiny_sdxl().save_pretrained(staging)
    )
