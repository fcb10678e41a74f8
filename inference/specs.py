"""Where a model's weights come from and how it should run. Built from the config by bot.config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Family = Literal["sdxl", "anima"]
# Memory modes (see inference.memory): where weights live while a job runs. "auto" picks at load time.
MemoryMode = Literal["high", "balanced", "low", "minimal"]
MemorySetting = Literal["auto", "high", "balanced", "low", "minimal"]
BUILTIN_MODELS: dict[str, Family] = {"tiny-sdxl": "sdxl", "tiny-anima": "anima"}


@dataclass(frozen=True)
class BuiltinSource:
    """A tiny random-weight pipeline built in code (no download), cached on disk after the first build."""

    name: str  # a key of BUILTIN_MODELS


@dataclass(frozen=True)
class HubSource:
    """A diffusers-format repository on the Hugging Face hub (or already in the local HF cache)."""

    repo_id: str
    revision: str | None = None
    variant: str | None = None  # e.g. "fp16"


@dataclass(frozen=True)
class DirSource:
    """A local diffusers-format directory (model_index.json or modular_model_index.json at its root)."""

    path: Path


@dataclass(frozen=True)
class SingleFileSource:
    """One SDXL checkpoint file (.safetensors), as A1111/ComfyUI users have them.

    `config` is a hub id or local diffusers directory holding the matching configs and tokenizers;
    None lets diffusers infer it (needs the hub or a warm HF cache).
    """

    path: Path
    config: str | None = None


@dataclass(frozen=True)
class ComfyUISource:
    """Anima as the three ComfyUI files: diffusion model (DiT + LLM adapter), Qwen3 text encoder, VAE.

    `config` is a hub id or local diffusers-format Anima directory that provides the component configs,
    the scheduler and the two tokenizers (no weights are read from it).
    """

    diffusion_model: Path
    text_encoder: Path
    vae: Path
    config: str | None = None


ModelSource = BuiltinSource | HubSource | DirSource | SingleFileSource | ComfyUISource


@dataclass(frozen=True)
class VaeFileSource:
    """One VAE .safetensors file (what ComfyUI's models/vae and WebUI's models/VAE hold)."""

    path: Path


# A VAE that replaces the model's own (e.g. madebyollin/sdxl-vae-fp16-fix, which decodes in fp16 without
# the fp32 upcast): a hub repository, a local diffusers folder, or one file.
VaeSource = HubSource | DirSource | VaeFileSource


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    dialect: str  # a dialect id: a file name in data/models/ without .toml
    source: ModelSource
    size_scale: float = 1.0  # bucket sizes are multiplied by this (the tiny built-ins use 1/8)
    memory: MemorySetting = "auto"  # the memory mode (inference.memory); auto = from the card's free memory
    vae: VaeSource | None = None  # replaces the model's own VAE
    compile: bool = False  # torch.compile the UNet / DiT at load (CUDA), warmed up before the first job


@dataclass(frozen=True)
class RuntimeOptions:
    """Resolved once at start (see inference.device)."""

    device: str  # "cuda", "cuda:1", "mps", "cpu"
    dtype: str | None  # "float16" | "bfloat16" | "float32"; None = the best for device and family
    cache_dir: Path  # where built-in tiny models are written
    local_files_only: bool = False  # never touch the network when loading
    vram_limit: int | None = None  # bytes of device memory the bot may use at most (None: what is free)
