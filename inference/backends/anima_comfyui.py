"""Anima from the three files ComfyUI users have, turned into diffusers components.

    models/diffusion_models/anima-preview.safetensors   Cosmos-Predict2 DiT (`net.*`) + LLM adapter
                                                        (`net.llm_adapter.*`)
    models/text_encoders/qwen_3_06b_base.safetensors    Qwen3-0.6B base (`model.*`)
    models/vae/qwen_image_vae.safetensors               Qwen-Image VAE (= Wan 2.1 VAE, original key names)

The component configs, the scheduler and both tokenizers come from a diffusers-format Anima repository
or directory (`ComfyUISource.config`); only its config files are read, never its weights.

Conversions: the DiT goes through diffusers' `convert_cosmos_transformer_checkpoint_to_diffusers`, the
adapter and Qwen3 only lose their prefixes (their names already match `AnimaTextConditioner` and
`Qwen3Model`), the VAE goes through diffusers' `convert_wan_vae_to_diffusers` (AutoencoderKLWan and
AutoencoderKLQwenImage share their state-dict layout). Models are created on the meta device and the
converted tensors assigned, so nothing is initialised twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from inference.specs import ComfyUISource
from inference.types import ModelLoadError

log = logging.getLogger(__name__)

# Where the component configs and tokenizers come from when a ComfyUISource names no `config`.
DEFAULT_CONFIG_REPO = "circlestone-labs/Anima-Base-v1.0-Diffusers"

ADAPTER_PREFIX = "net.llm_adapter."
DIT_PREFIX = "net."
QWEN3_PREFIX = "model."

SLOT_DIFFUSION_MODEL = "diffusion model (DiT + LLM adapter)"
SLOT_TEXT_ENCODER = "Qwen3 text encoder"
SLOT_VAE = "VAE"

_MAX_NAMED_KEYS = 3


# --------------------------------------------------------------------------------------------- reading


def _key_list(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_NAMED_KEYS])
    more = f", … ({len(keys) - _MAX_NAMED_KEYS} more)" if len(keys) > _MAX_NAMED_KEYS else ""
    return shown + more


def guess_checkpoint_kind(keys: Iterable[str]) -> str | None:
    """Which of the three Anima files a set of state-dict keys looks like (a slot name), or None."""
    keyset = set(keys)
    dit_prefixes = ("net.", "model.diffusion_model.", "")
    dit_markers = ("llm_adapter.out_proj.", "x_embedder.proj.", "t_embedding_norm.", "final_layer.linear.")
    if any(k.startswith(tuple(p + m for p in dit_prefixes for m in dit_markers)) for k in keyset):
        return SLOT_DIFFUSION_MODEL
    if any(k.endswith("embed_tokens.weight") for k in keyset) and any(
        ".self_attn.q_proj." in k and "layers." in k for k in keyset
    ):
        return SLOT_TEXT_ENCODER
    vae_prefixes = ("decoder.middle.", "decoder.mid_block.", "encoder.conv1.", "encoder.conv_in.")
    if any(k.startswith(vae_prefixes) for k in keyset):
        return SLOT_VAE
    return None


def read_checkpoint(path: Path, slot: str) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file (on the CPU), checked to be the file the slot expects."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelLoadError(f"Anima {slot} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            kind = guess_checkpoint_kind(keys)
            if kind is not None and kind != slot:
                raise ModelLoadError(
                    f"{path} was given as the Anima {slot} but looks like the {kind}: "
                    "check which file goes in which slot"
                )
            state_dict = {k: f.get_tensor(k) for k in keys}
    except ModelLoadError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"Anima {slot} file {path} is not a readable .safetensors file ({e})") from e
    if not state_dict:
        raise ModelLoadError(f"Anima {slot} file {path} holds no tensors")
    return state_dict


# ---------------------------------------------------------------------------------------- conversions


def split_diffusion_model(
    state_dict: Mapping[str, torch.Tensor], path: Path | str = "diffusion model"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """ComfyUI Anima DiT file → (diffusers CosmosTransformer3DModel keys, AnimaTextConditioner keys)."""
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    # The official files use `net.`; checkpoints saved from a ComfyUI model patcher carry
    # `model.diffusion_model.`, and some trainers save without any prefix.
    normalised: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("model.diffusion_model."):
            key = key.removeprefix("model.diffusion_model.")
        if not key.startswith(DIT_PREFIX):
            key = DIT_PREFIX + key
        normalised[key] = value

    adapter = {k.removeprefix(ADAPTER_PREFIX): v for k, v in normalised.items() if k.startswith(ADAPTER_PREFIX)}
    if not adapter:
        raise ModelLoadError(
            f"{path} has no `{ADAPTER_PREFIX}*` keys: it is not an Anima diffusion model "
            "(a plain Cosmos-Predict2 DiT has no LLM adapter)"
        )
    dit = {k: v for k, v in normalised.items() if not k.startswith(ADAPTER_PREFIX)}
    transformer = convert_cosmos_transformer_checkpoint_to_diffusers(dit)
    return transformer, adapter


def convert_text_encoder(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI Qwen3 file (`model.*`, maybe `lm_head.weight`) → Qwen3Model keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight":
            continue  # the causal-LM head; Anima uses the hidden states only
        out[key.removeprefix(QWEN3_PREFIX)] = value
    return out


def convert_vae(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen-Image / Wan 2.1 VAE file with its original key names → AutoencoderKLQwenImage keys.

    A file that already has diffusers names (`encoder.conv_in.*`) is returned as is.
    """
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = dict(state_dict)
    for prefix in ("first_stage_model.", "vae."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    if "encoder.conv_in.weight" in sd or "decoder.mid_block.resnets.0.norm1.gamma" in sd:
        return sd
    return dict(convert_wan_vae_to_diffusers(sd))


# ------------------------------------------------------------------------------------- building models


def _check_fits(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_key_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_key_list(unexpected)})")
        raise ModelLoadError(f"{what} does not match the config: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        more = f" (+{len(wrong) - _MAX_NAMED_KEYS} more)" if len(wrong) > _MAX_NAMED_KEYS else ""
        raise ModelLoadError(
            f"{what} has tensors of the wrong shape for the config (file vs config): "
            + "; ".join(wrong[:_MAX_NAMED_KEYS])
            + more
        )


def _assign_weights(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype, what: str
) -> torch.nn.Module:
    """Load `state_dict` into a model created on the meta device, in `dtype` (fp32 where it must stay fp32)."""
    _check_fits(model, state_dict, what)
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())

    def target_dtype(key: str, tensor: torch.Tensor) -> torch.dtype:
        if not tensor.is_floating_point():
            return tensor.dtype
        if keep_fp32 and any(part in keep_fp32 for part in key.split(".")):
            return torch.float32
        return dtype

    cast = {k: v.to(target_dtype(k, v)) for k, v in state_dict.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"{what}: no weights for {_key_list(left)}")
    model.eval()
    model.requires_grad_(False)
    return model


def _component_source(pipe: Any, name: str, config_dir: Path | None) -> tuple[str, str | None, str | None]:
    """Where the config of component `name` lives: `<config_dir>/<name>/` when the config is a local
    directory that has it (a copy holding only the json files is enough), else what the index records."""
    if config_dir is not None and (config_dir / name / "config.json").is_file():
        return str(config_dir), name, None
    spec = pipe.get_component_spec(name)
    if not spec.pretrained_model_name_or_path:
        raise ModelLoadError(f"the Anima config names no location for the {name} component")
    return str(spec.pretrained_model_name_or_path), spec.subfolder, spec.revision


def _empty_diffusers_model(pipe: Any, name: str, cls: Any, local_files_only: bool, config_dir: Path | None) -> Any:
    from accelerate import init_empty_weights

    repo, subfolder, revision = _component_source(pipe, name, config_dir)
    try:
        config = cls.load_config(repo, subfolder=subfolder, revision=revision, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the {name} config from {repo}/{subfolder or ''}: {e}") from e
    with init_empty_weights():
        return cls.from_config(config)


def _empty_qwen3(pipe: Any, local_files_only: bool, config_dir: Path | None) -> Any:
    from accelerate import init_empty_weights
    from transformers import Qwen3Config, Qwen3Model

    repo, subfolder, revision = _component_source(pipe, "text_encoder", config_dir)
    try:
        config = Qwen3Config.from_pretrained(
            repo, subfolder=subfolder or "", revision=revision or "main", local_files_only=local_files_only
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the text_encoder config from {repo}/{subfolder or ''}: {e}") from e
    with init_empty_weights():
        return Qwen3Model(config)


def load_comfyui_components(
    pipe: Any,
    source: ComfyUISource,
    dtype: torch.dtype,
    local_files_only: bool,
    stage: Callable[[str], None] | None = None,
    config_dir: Path | None = None,
) -> None:
    """Fill `pipe` (an AnimaModularPipeline created from the config location, tokenizers and scheduler
    already loaded) with the DiT, LLM adapter, Qwen3 and VAE read from the three ComfyUI files.
    `config_dir` is the config location when it is a local directory."""
    from diffusers import AnimaTextConditioner, AutoencoderKLQwenImage, CosmosTransformer3DModel

    def report(name: str) -> None:
        if stage is not None:
            stage(name)

    report("reading the diffusion model")
    dit_path = Path(source.diffusion_model)
    transformer_sd, adapter_sd = split_diffusion_model(read_checkpoint(dit_path, SLOT_DIFFUSION_MODEL), dit_path)
    transformer = _assign_weights(
        _empty_diffusers_model(pipe, "transformer", CosmosTransformer3DModel, local_files_only, config_dir),
        transformer_sd,
        dtype,
        f"the DiT in {dit_path}",
    )
    text_conditioner = _assign_weights(
        _empty_diffusers_model(pipe, "text_conditioner", AnimaTextConditioner, local_files_only, config_dir),
        adapter_sd,
        dtype,
        f"the LLM adapter ({ADAPTER_PREFIX}*) in {dit_path}",
    )
    del transformer_sd, adapter_sd

    report("reading the text encoder")
    te_path = Path(source.text_encoder)
    text_encoder = _assign_weights(
        _empty_qwen3(pipe, local_files_only, config_dir),
        convert_text_encoder(read_checkpoint(te_path, SLOT_TEXT_ENCODER)),
        dtype,
        f"the Qwen3 text encoder in {te_path}",
    )

    report("reading the VAE")
    vae_path = Path(source.vae)
    vae = _assign_weights(
        _empty_diffusers_model(pipe, "vae", AutoencoderKLQwenImage, local_files_only, config_dir),
        convert_vae(read_checkpoint(vae_path, SLOT_VAE)),
        dtype,
        f"the VAE in {vae_path}",
    )

    pipe.update_components(
        transformer=transformer, text_conditioner=text_conditioner, text_encoder=text_encoder, vae=vae
    )


def check_files(source: ComfyUISource) -> None:
    """Fail fast, before any config is fetched, when one of the three files is not there."""
    for slot, path in (
        (SLOT_DIFFUSION_MODEL, source.diffusion_model),
        (SLOT_TEXT_ENCODER, source.text_encoder),
        (SLOT_VAE, source.vae),
    ):
        if not Path(path).is_file():
            raise ModelLoadError(f"Anima {slot} file not found: {path}")
