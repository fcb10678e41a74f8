"""Test fixture: write an Anima pipeline's weights as the three ComfyUI files, in their real key layouts.

This is the inverse of inference.backends.anima_comfyui (diffusers → ComfyUI): the DiT gets the original
Cosmos-Predict2 ("MiniTrainDIT") names under `net.`, the LLM adapter goes under `net.llm_adapter.`, Qwen3
gets `model.`, and the VAE gets the original Wan 2.1 names (flat `encoder.downsamples.N`/`decoder.upsamples.N`
lists, `middle.0/1/2`, `head.0/2`, `residual.0/2/3/6`, `conv1`/`conv2` for the quant convs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

DIFFUSION_MODEL = "models/diffusion_models/anima-preview.safetensors"
TEXT_ENCODER = "models/text_encoders/qwen_3_06b_base.safetensors"
VAE = "models/vae/qwen_image_vae.safetensors"


@dataclass(frozen=True)
class ComfyUIFiles:
    root: Path
    diffusion_model: Path
    text_encoder: Path
    vae: Path


# --------------------------------------------------------------------------------------------- the DiT

_DIT_BLOCK_PARTS = [
    ("norm1.linear_1", "adaln_modulation_self_attn.1"),
    ("norm1.linear_2", "adaln_modulation_self_attn.2"),
    ("norm2.linear_1", "adaln_modulation_cross_attn.1"),
    ("norm2.linear_2", "adaln_modulation_cross_attn.2"),
    ("norm3.linear_1", "adaln_modulation_mlp.1"),
    ("norm3.linear_2", "adaln_modulation_mlp.2"),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    ("to_q.", "q_proj."),
    ("to_k.", "k_proj."),
    ("to_v.", "v_proj."),
    ("to_out.0.", "output_proj."),
    ("norm_q.", "q_norm."),
    ("norm_k.", "k_norm."),
    ("ff.net.0.proj.", "mlp.layer1."),
    ("ff.net.2.", "mlp.layer2."),
]
_DIT_TOP = {
    "patch_embed.proj.": "x_embedder.proj.1.",
    "time_embed.t_embedder.": "t_embedder.1.",
    "time_embed.norm.": "t_embedding_norm.",
    "norm_out.linear_1.": "final_layer.adaln_modulation.1.",
    "norm_out.linear_2.": "final_layer.adaln_modulation.2.",
    "proj_out.": "final_layer.linear.",
}


def transformer_key_to_comfyui(key: str) -> str:
    m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", key)
    if m:
        rest = m.group(2)
        for new, old in _DIT_BLOCK_PARTS:
            rest = rest.replace(new, old)
        return f"net.blocks.{m.group(1)}.{rest}"
    for new, old in _DIT_TOP.items():
        if key.startswith(new):
            return "net." + old + key.removeprefix(new)
    raise KeyError(f"no ComfyUI name known for DiT key {key}")


def diffusion_model_to_comfyui(
    transformer_sd: dict[str, torch.Tensor], adapter_sd: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = {transformer_key_to_comfyui(k): v for k, v in transformer_sd.items()}
    out.update({f"net.llm_adapter.{k}": v for k, v in adapter_sd.items()})
    # Bookkeeping tensors real Cosmos-Predict2 checkpoints carry, which the loader must drop.
    out["net.pos_embedder.dim_spatial_range"] = torch.tensor([0, 1])
    out["net.accum_iteration"] = torch.tensor([0])
    return out


# --------------------------------------------------------------------------------------------- the VAE

_RESIDUAL = {
    "norm1.gamma": "residual.0.gamma",
    "conv1": "residual.2",
    "norm2.gamma": "residual.3.gamma",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _residual_part(rest: str) -> str:
    for new, old in _RESIDUAL.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def vae_key_to_wan(key: str) -> str:
    simple = {
        "encoder.conv_in.": "encoder.conv1.",
        "decoder.conv_in.": "decoder.conv1.",
        "quant_conv.": "conv1.",
        "post_quant_conv.": "conv2.",
        "encoder.norm_out.": "encoder.head.0.",
        "decoder.norm_out.": "decoder.head.0.",
        "encoder.conv_out.": "encoder.head.2.",
        "decoder.conv_out.": "decoder.head.2.",
    }
    for new, old in simple.items():
        if key.startswith(new):
            return old + key.removeprefix(new)
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        side, kind, idx, rest = m.groups()
        if kind == "attentions":
            return f"{side}.middle.1.{rest}"
        return f"{side}.middle.{2 * int(idx)}.{_residual_part(rest)}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key)
    if m:
        idx, rest = m.groups()
        if rest.startswith(("resample.", "time_conv.")):
            return f"encoder.downsamples.{idx}.{rest}"
        return f"encoder.downsamples.{idx}.{_residual_part(rest)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        block, kind, idx, rest = m.groups()
        if kind == "upsamplers":
            return f"decoder.upsamples.{4 * int(block) + 3}.{rest}"
        return f"decoder.upsamples.{4 * int(block) + int(idx)}.{_residual_part(rest)}"
    raise KeyError(f"no Wan name known for VAE key {key}")


def vae_to_wan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {vae_key_to_wan(k): v for k, v in sd.items()}


# ------------------------------------------------------------------------------------------ the files


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_comfyui_files(pipe: Any, root: Path) -> ComfyUIFiles:
    """Write `pipe`'s DiT+adapter, Qwen3 and VAE weights into a ComfyUI folder tree under `root`."""
    dm = _save(
        diffusion_model_to_comfyui(pipe.transformer.state_dict(), pipe.text_conditioner.state_dict()),
        root / DIFFUSION_MODEL,
    )
    te = _save({f"model.{k}": v for k, v in pipe.text_encoder.state_dict().items()}, root / TEXT_ENCODER)
    vae = _save(vae_to_wan(pipe.vae.state_dict()), root / VAE)
    return ComfyUIFiles(root=root, diffusion_model=dm, text_encoder=te, vae=vae)
