"""Tiny LoRA files made in code for the tiny models (inference/tiny/sdxl.py, anima.py): tests and benchmarks.

Each file holds low-rank deltas (rank RANK, random, seeded) for the attention projections of the tiny model, in the
key layouts real files use:
    SDXL  "kohya"      WebUI/kohya sd-scripts: lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down
                       .weight / .lora_up.weight / .alpha, and lora_te1_text_model_encoder_layers_0_self_attn_q_proj...
          "diffusers"  unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight / .lora_B.weight,
                       text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight
    Anima "diffusers"  transformer.transformer_blocks.0.attn1.to_q.lora_A.weight (peft names of the diffusers model),
                       text_conditioner.blocks.0.self_attn.q_proj.lora_A.weight
          "comfyui"    diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight, diffusion_model.llm_adapter.blocks.0...
                       (the original Cosmos names, as ComfyUI and diffusion-pipe write them)
          "kohya"      lora_unet_blocks_0_self_attn_q_proj.lora_down.weight (kohya sd-scripts' Anima layout, which
                       diffusers 0.42 cannot load: the refusal's test file)
Both layouts of a family hold the same numbers (alpha = rank: scale 1), so they must give the same image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

RANK = 4
SCALE = 0.5  # the deltas' size relative to the weights they change: visible, never overwhelming
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
_ADAPTER = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj")  # Anima's LLM adapter (self and cross)

SdxlLayout = Literal["kohya", "diffusers"]
AnimaLayout = Literal["diffusers", "comfyui", "kohya"]

# diffusers' Cosmos module names -> the original (ComfyUI) ones: the inverse of diffusers'
# _convert_non_diffusers_anima_lora_to_diffusers for the projections these files target.
_COSMOS_NAMES = (
    ("transformer_blocks.", "blocks."),
    ("attn1.to_q", "self_attn.q_proj"),
    ("attn1.to_k", "self_attn.k_proj"),
    ("attn1.to_v", "self_attn.v_proj"),
    ("attn1.to_out.0", "self_attn.output_proj"),
    ("attn2.to_q", "cross_attn.q_proj"),
    ("attn2.to_k", "cross_attn.k_proj"),
    ("attn2.to_v", "cross_attn.v_proj"),
    ("attn2.to_out.0", "cross_attn.output_proj"),
)


def _deltas(
    model: torch.nn.Module, suffixes: tuple[str, ...], seed: int, scale: float = SCALE
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per targeted Linear of `model`: A (rank x in), B (out x rank), seeded; B A is about `scale` times
    the layer's weight in size."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name.endswith(suffixes):
            continue
        weight = module.weight.detach().float()
        size = float(weight.std()) * scale
        down = torch.randn((RANK, module.in_features), generator=generator) / module.in_features**0.5
        up = torch.randn((module.out_features, RANK), generator=generator) * size * (module.in_features / RANK) ** 0.5
        out[name] = (down.contiguous(), up.contiguous())
    return out


def _sgm_name(name: str, layers_per_block: int) -> str:
    """A diffusers SDXL UNet module name as kohya/WebUI (SGM) names it, e.g. down_blocks.1.attentions.0.X ->
    input_blocks.4.1.X."""
    parts = name.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        index = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["input_blocks", str(index), "1", *parts[4:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        index = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["output_blocks", str(index), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    raise ValueError(f"no SGM name for {name}")


def tiny_sdxl_lora(
    layout: SdxlLayout = "kohya", seed: int = 1, text_encoder: bool = True, scale: float = SCALE
) -> dict[str, torch.Tensor]:
    """A LoRA for the tiny SDXL (UNet attention, and the first text encoder's attention if `text_encoder`)."""
    from inference.tiny.sdxl import build_tiny_sdxl

    pipe = build_tiny_sdxl()
    state: dict[str, torch.Tensor] = {}
    parts: list[tuple[str, torch.nn.Module, tuple[str, ...]]] = [("unet", pipe.unet, _ATTENTION)]
    if text_encoder:
        parts.append(("text_encoder", pipe.text_encoder, _TEXT))
    layers_per_block = int(pipe.unet.config.layers_per_block)
    for offset, (component, model, suffixes) in enumerate(parts):
        for name, (down, up) in _deltas(model, suffixes, seed * 1000 + offset, scale).items():
            if layout == "diffusers":
                state[f"{component}.{name}.lora_A.weight"] = down
                state[f"{component}.{name}.lora_B.weight"] = up
                continue
            if component == "unet":
                key = "lora_unet_" + _sgm_name(name, layers_per_block).replace(".", "_")
            else:
                key = "lora_te1_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            state[f"{key}.alpha"] = torch.tensor(float(RANK))
    return state


def tiny_anima_lora(
    layout: AnimaLayout = "diffusers", seed: int = 1, scale: float = SCALE, text_conditioner: bool = True
) -> dict[str, torch.Tensor]:
    """A LoRA for the tiny Anima's DiT attention (self and cross), and the LLM adapter's (text_conditioner, the
    original llm_adapter) attention if `text_conditioner`."""
    from inference.tiny.anima import build_tiny_anima

    pipe: Any = build_tiny_anima()
    state: dict[str, torch.Tensor] = {}
    if text_conditioner:
        for name, (down, up) in _deltas(pipe.text_conditioner, _ADAPTER, seed * 1000 + 1, scale).items():
            if layout == "diffusers":
                state[f"text_conditioner.{name}.lora_A.weight"] = down
                state[f"text_conditioner.{name}.lora_B.weight"] = up
            elif layout == "comfyui":
                state[f"diffusion_model.llm_adapter.{name}.lora_A.weight"] = down
                state[f"diffusion_model.llm_adapter.{name}.lora_B.weight"] = up
            else:
                key = "lora_unet_llm_adapter_" + name.replace(".", "_")
                state[f"{key}.lora_down.weight"] = down
                state[f"{key}.lora_up.weight"] = up
                state[f"{key}.alpha"] = torch.tensor(float(RANK))
    for name, (down, up) in _deltas(pipe.transformer, _ATTENTION, seed * 1000, scale).items():
        if layout == "diffusers":
            state[f"transformer.{name}.lora_A.weight"] = down
            state[f"transformer.{name}.lora_B.weight"] = up
            continue
        original = name
        for new, old in _COSMOS_NAMES:
            original = original.replace(new, old)
        if layout == "comfyui":
            state[f"diffusion_model.{original}.lora_A.weight"] = down
            state[f"diffusion_model.{original}.lora_B.weight"] = up
        else:
            key = "lora_unet_" + original.replace(".", "_")
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            state[f"{key}.alpha"] = torch.tensor(float(RANK))
    return state


def write_lora(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save a state dict as a .safetensors LoRA file (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path
