"""Write a diffusers SDXL pipeline as ONE checkpoint file in the original (Stability "sgm"/LDM) key layout.

That is the layout of the SDXL .safetensors files A1111 and ComfyUI users have (Animagine XL's single
files included):

    model.diffusion_model.*                 UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*                     VAE (encoder.down.N.block.M, mid.attn_1 with 1x1-conv q/k/v)
    conditioner.embedders.0.transformer.*   CLIP ViT-L text encoder, in Hugging Face key names
    conditioner.embedders.1.model.*         OpenCLIP ViT-bigG text encoder, in open_clip key names
                                            (fused in_proj q/k/v, text_projection stored transposed)

Test fixture only: it lets the SingleFileSource path be tested offline on the tiny model. The mapping is
the inverse of what diffusers' single-file loader does; it is written for UNets whose up blocks mirror
their down blocks (every SDXL UNet) and VAEs with one mid attention (every SD/SDXL VAE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
OPEN_CLIP = "conditioner.embedders.1.model."

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    per_block = int(config["layers_per_block"])
    up_has_attention = ["CrossAttn" in name for name in config["up_block_types"]]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        head = ".".join(parts[:2])
        if head in fixed or parts[0] in fixed:
            prefix = head if head in fixed else parts[0]
            new = fixed[prefix] + key[len(prefix) :]
        elif parts[0] == "down_blocks":
            block, kind, index = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            first = 1 + block * (per_block + 1)
            if kind == "resnets":
                new = f"input_blocks.{first + index}.0.{_rename_first(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"input_blocks.{first + index}.1.{rest}"
            elif kind == "downsamplers":  # downsamplers.0.conv.* -> input_blocks.N.0.op.*
                new = f"input_blocks.{first + per_block}.0.op.{rest.removeprefix('conv.')}"
            else:
                raise KeyError(key)
        elif parts[0] == "mid_block":
            kind, index = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_rename_first(rest, _UNET_RESNET)}"
            else:
                new = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            block, kind, index = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            first = block * (per_block + 1)
            if kind == "resnets":
                new = f"output_blocks.{first + index}.0.{_rename_first(rest, _UNET_RESNET)}"
            elif kind == "attentions":
                new = f"output_blocks.{first + index}.1.{rest}"
            elif kind == "upsamplers":
                slot = 2 if up_has_attention[block] else 1
                new = f"output_blocks.{first + per_block}.{slot}.{rest}"
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
        out[UNET + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
            new = key
        elif parts[1] == "conv_norm_out":
            new = f"{parts[0]}.norm_out.{parts[2]}"
        elif parts[1] == "down_blocks":
            block, kind = int(parts[2]), parts[3]
            rest = ".".join(parts[5:])
            if kind == "resnets":
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                new = f"encoder.down.{block}.block.{parts[4]}.{rest}"
            else:
                new = f"encoder.down.{block}.downsample.{rest}"
        elif parts[1] == "up_blocks":
            block, kind = n_up - 1 - int(parts[2]), parts[3]
            rest = ".".join(parts[5:])
            if kind == "resnets":
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                new = f"decoder.up.{block}.block.{parts[4]}.{rest}"
            else:
                new = f"decoder.up.{block}.upsample.{rest}"
        elif parts[1] == "mid_block":
            kind, index = parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                new = f"{parts[0]}.mid.block_{index + 1}.{rest}"
            else:
                new = f"{parts[0]}.mid.attn_1.{_rename_first(rest, _VAE_ATTENTION)}"
                if value.ndim == 2:  # the original stores these projections as 1x1 convolutions
                    value = value[:, :, None, None]
        else:
            raise KeyError(key)
        out[VAE + new] = value
    return out


def clip_l_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP ViT-L keeps its Hugging Face names under `transformer.text_model.` (transformers >= 5.6
    flattened CLIPTextModel's own state dict, so the `text_model.` level may have to be put back)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        inner = key if key.startswith("text_model.") else "text_model." + key
        out[CLIP_L + inner] = value
    return out


def open_clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key.removeprefix("text_model.")
        if name.endswith("position_ids"):
            continue
        if name == "embeddings.token_embedding.weight":
            out[OPEN_CLIP + "token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            out[OPEN_CLIP + "positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            out[OPEN_CLIP + "ln_final." + name.split(".")[-1]] = value
        elif key == "text_projection.weight":
            out[OPEN_CLIP + "text_projection"] = value.T.contiguous()
        elif name.startswith("encoder.layers."):
            parts = name.split(".")
            layer, rest = parts[2], ".".join(parts[3:])
            block = f"{OPEN_CLIP}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                projection, kind = rest.split(".")[1], rest.split(".")[2]
                fused.setdefault(f"{block}attn.in_proj_{kind}", {})[projection] = value
            else:
                rest = (
                    rest.replace("self_attn.", "attn.")
                    .replace("layer_norm1", "ln_1")
                    .replace("layer_norm2", "ln_2")
                    .replace("mlp.fc1", "mlp.c_fc")
                    .replace("mlp.fc2", "mlp.c_proj")
                )
                out[block + rest] = value
        else:
            raise KeyError(key)
    for key, pieces in fused.items():
        out[key] = torch.cat([pieces["q_proj"], pieces["k_proj"], pieces["v_proj"]], dim=0)
    return out


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """All weights of an SDXL pipeline in the original single-file key layout."""
    state: dict[str, torch.Tensor] = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    state.update(clip_l_to_ldm(pipe.text_encoder.state_dict()))
    state.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict()))
    return state


def save_sdxl_checkpoint(pipe: Any, path: Path) -> Path:
    """Write the pipeline's weights as one .safetensors file in the original SDXL layout."""
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in pipeline_to_ldm(pipe).items()}
    save_file(tensors, str(path))
    return path
