"""A tiny random-weight Anima pipeline built in code, for tests and for trying the bot without weights.

Same component classes and layout as the real model (Cosmos DiT, LLM adapter, Qwen3 text encoder,
Qwen-Image/Wan VAE, two tokenizers, flow-matching scheduler, CFG guider), only very narrow. The VAE keeps
the real block structure (4 levels, 2 residual blocks each) so its weights convert to and from the
Wan 2.1 key names exactly like the real one. Weights are seeded per component: every build is identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.tiny.common import build_once, byte_alphabet

if TYPE_CHECKING:
    from diffusers import AnimaModularPipeline

TINY_ANIMA_NAME = "tiny-anima"
_SEED = 0

# Words the tiny T5 Unigram vocabulary knows as whole pieces; anything else falls back to single characters.
_T5_WORDS = (
    "girl",
    "boy",
    "solo",
    "smile",
    "hair",
    "eyes",
    "blue",
    "red",
    "long",
    "short",
    "quality",
    "best",
    "masterpiece",
    "worst",
    "low",
    "score",
    "safe",
    "sky",
    "night",
    "outdoors",
    "looking",
    "at",
    "viewer",
)


def build_qwen_tokenizer() -> Any:
    """A byte-level Qwen2Tokenizer: one token per byte, no merges, Qwen's <|endoftext|> as pad/eos/unk."""
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    return Qwen2Tokenizer(vocab=vocab, merges=[])


def build_t5_tokenizer() -> Any:
    """A small Unigram T5 tokenizer (T5TokenizerFast): pad/eos/unk, some whole words, and single characters."""
    import string

    from transformers import T5Tokenizer  # the tokenizers-backed class (T5TokenizerFast is its alias in v5)

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -2.0) for w in _T5_WORDS]
    pieces.append(("▁", -3.0))
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(c, -5.0) for c in chars]
    pieces += [("▁" + c, -5.5) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _jitter_vectors(model: Any, seed: int) -> None:
    """Norm weights start as all ones and biases as zeros; give every 1-D parameter distinct values so that
    a mixed-up key in a conversion cannot go unnoticed (two swapped all-ones tensors look identical)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() == param.shape[0]:  # vectors, and the VAE's (C, 1, 1, 1) gammas
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def build_tiny_anima() -> AnimaModularPipeline:
    """Build the tiny Anima pipeline in memory (float32, CPU, deterministic weights)."""
    from diffusers import (
        AnimaAutoBlocks,
        AnimaTextConditioner,
        AutoencoderKLQwenImage,
        ClassifierFreeGuidance,
        CosmosTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_qwen_tokenizer()
    t5_tokenizer = build_t5_tokenizer()

    _seeded(_SEED)
    text_encoder: Any = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
    )
    text_encoder.eval()
    _jitter_vectors(text_encoder, _SEED + 100)

    _seeded(_SEED + 1)
    text_conditioner: Any = AnimaTextConditioner(
        source_dim=32,
        target_dim=32,
        model_dim=32,
        num_layers=2,
        num_attention_heads=4,
        mlp_ratio=2.0,
        target_vocab_size=len(t5_tokenizer),
        min_sequence_length=16,
    )
    text_conditioner.eval()
    _jitter_vectors(text_conditioner, _SEED + 101)

    _seeded(_SEED + 2)
    transformer: Any = CosmosTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        mlp_ratio=2.0,
        text_embed_dim=32,
        adaln_lora_dim=8,
        max_size=(4, 32, 32),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 4.0, 4.0),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    transformer.eval()
    _jitter_vectors(transformer, _SEED + 102)

    _seeded(_SEED + 3)
    vae: Any = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    vae.eval()
    _jitter_vectors(vae, _SEED + 103)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    guider = ClassifierFreeGuidance(guidance_scale=4.0)

    blocks: Any = AnimaAutoBlocks()
    pipe: Any = blocks.init_pipeline()
    pipe.update_components(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        t5_tokenizer=t5_tokenizer,
        text_conditioner=text_conditioner,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        guider=guider,
    )
    return pipe


def _point_index_at(index: Path, old: str, new: str) -> None:
    """save_pretrained records the directory it wrote to; record the final location instead."""
    import json

    data = json.loads(index.read_text(encoding="utf-8"))
    for value in data.values():
        if (
            isinstance(value, list)
            and len(value) == 3
            and isinstance(value[2], dict)
            and value[2].get("pretrained_model_name_or_path") == old
        ):
            value[2]["pretrained_model_name_or_path"] = new
    index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_tiny_anima(cache_dir: Path) -> Path:
    """The tiny Anima as a diffusers-format directory under `cache_dir`, built and saved on first use."""
    target = Path(cache_dir) / TINY_ANIMA_NAME

    def write(staging: Path) -> None:
        pipe: Any = build_tiny_anima()
        pipe.save_pretrained(str(staging), overwrite_modular_index=True)
        _point_index_at(staging / "modular_model_index.json", str(staging), str(target))

    return build_once(target, "modular_model_index.json", write)
