"""The diffusers / accelerate features behind the memory modes (inference.memory), shared by both backends.

Every feature here is the ordinary one diffusers uses for its own pipelines:
  * VAE slicing and tiling: the VAE's own `enable_slicing` / `enable_tiling` (AutoencoderKL for SDXL,
    AutoencoderKLQwenImage for Anima), with the tile edge inference.memory.tile_edge gives for the mode.
  * text encoders off the device after encoding (balanced): accelerate's `cpu_offload_with_hook` on each text
    encoder (its forward moves it to the device), and a hook on the first model that runs after them which sends
    them back to the CPU, the same `prev_module_hook` mechanism DiffusionPipeline.enable_model_cpu_offload chains.
  * model CPU offload (low): `cpu_offload_with_hook` chained over the components in the order they run.
  * sequential offload (minimal): diffusers' group offloading at leaf level (`apply_group_offloading(...,
    offload_type="leaf_level")`, what DiffusionPipeline.enable_group_offload applies to each component): each
    layer's weights move to the device just before it runs and back after. It is diffusers' current form of
    enable_sequential_cpu_offload, and the one that works here: accelerate's sequential `cpu_offload` breaks on
    this accelerate/transformers pair (a CLIP embedding weight comes back as a plain tensor and the next offload
    raises). On CUDA the denoiser runs with use_stream=True: its next layer's weights are copied on a side stream
    while the current one computes (pinned host memory), so minimal costs far less than blocking copies.
The first three hang accelerate hooks (`_hf_hook`), the last diffusers hooks (`_diffusers_hook`); remove_hooks
takes every one off again, so switching modes back and forth leaves no trace.

On CUDA the weights that move are fp16 (SDXL) or bf16 (Anima): a 6.5 GiB SDXL moves about 2 GiB of text
encoders per prompt in balanced mode (~0.1 s over PCIe 4), the whole model once per image in low mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import cpu_offload_with_hook
from accelerate.hooks import ModelHook, UserCpuOffloadHook, add_hook_to_module, remove_hook_from_module
from diffusers.hooks.group_offloading import (
    _GROUP_OFFLOADING,
    _LAYER_EXECUTION_TRACKER,
    _LAZY_PREFETCH_GROUP_OFFLOADING,
    _is_group_offload_enabled,
    apply_group_offloading,
)

from inference.device import device_budget
from inference.memory import Footprint, gib, tile_edge
from inference.specs import MemoryMode, ModelSpec, RuntimeOptions

log = logging.getLogger(__name__)
_ORIGINAL_TILES = "_animebot_original_tiles"
_GROUP_OFFLOAD_HOOKS = (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING)


def set_vae_features(vae: Any, footprint: Footprint, mode: MemoryMode, scale_factor: int) -> None:
    """Slicing always (a batch decodes one image at a time: same pixels, less memory); tiling in every mode but
    high, with tiles of tile_edge(footprint, mode) pixels (an image no larger than one tile is not tiled)."""
    vae.enable_slicing()
    _set_tiling(vae, tile_edge(footprint, mode), scale_factor)


def _set_tiling(vae: Any, tile: int | None, scale_factor: int) -> None:
    """Tiles of `tile` pixels, or tiling off (None) with the VAE's own tile sizes back."""
    if hasattr(vae, "tile_sample_min_size"):  # AutoencoderKL (SDXL): one square tile edge
        if not hasattr(vae, _ORIGINAL_TILES):
            setattr(vae, _ORIGINAL_TILES, (vae.tile_sample_min_size, vae.tile_latent_min_size))
        sample, latent = getattr(vae, _ORIGINAL_TILES)
        if tile is not None:
            sample, latent = tile, tile // scale_factor
        vae.tile_sample_min_size, vae.tile_latent_min_size = sample, latent
    elif hasattr(vae, "tile_sample_min_height"):  # AutoencoderKLQwenImage (Anima): height and width
        if not hasattr(vae, _ORIGINAL_TILES):
            setattr(vae, _ORIGINAL_TILES, (vae.tile_sample_min_height, vae.tile_sample_min_width))
        height, width = getattr(vae, _ORIGINAL_TILES)
        vae.tile_sample_min_height, vae.tile_sample_min_width = (tile, tile) if tile is not None else (height, width)
    if tile is None:
        vae.disable_tiling()
    else:
        vae.enable_tiling()


@contextmanager
def tiled_when_large(
    vae: Any, footprint: Footprint, mode: MemoryMode, scale_factor: int, width: int, height: int
) -> Iterator[bool]:
    """An image-to-image pass (an upscale, the hires fix's refine) at a size beyond one tile encodes and decodes
    its images in tiles of footprint.tile_px in every mode: high mode does not tile otherwise, and those are the
    largest images a job makes. The mode's own VAE features come back afterwards. Yields whether it tiled."""
    if tile_edge(footprint, mode) is not None or max(width, height) <= footprint.tile_px:
        yield False
        return
    _set_tiling(vae, footprint.tile_px, scale_factor)
    try:
        yield True
    finally:
        set_vae_features(vae, footprint, mode, scale_factor)


class OffloadBefore(ModelHook):
    """An accelerate hook for the model that runs right after the text encoders: before its forward, the text
    encoders (hooked with cpu_offload_with_hook) go back to the CPU. The model itself stays where it is."""

    def __init__(self, previous: list[UserCpuOffloadHook]) -> None:
        self.previous = previous

    @torch.compiler.disable  # it moves modules: never inside a compiled graph
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        for hook in self.previous:
            if next(hook.model.parameters()).device.type != "cpu":
                hook.offload()
        return args, kwargs


def offload_text_encoders(
    encoders: Iterable[torch.nn.Module | None],
    next_model: torch.nn.Module,
    device: str,
    also_before: Iterable[torch.nn.Module | None] = (),
) -> list[UserCpuOffloadHook]:
    """Balanced mode: each text encoder waits on the CPU and comes to `device` when it runs; `next_model`'s
    first forward (the denoiser, or Anima's LLM adapter) sends them back. They start on the CPU.

    `also_before` (the VAE's encoder): image to image encodes its source after the prompt and before the
    denoiser runs; sending the text encoders back first keeps them out of that encode's peak."""
    hooks = [cpu_offload_with_hook(encoder, device)[1] for encoder in encoders if encoder is not None]
    add_hook_to_module(next_model, OffloadBefore(hooks), append=True)
    for model in also_before:
        if model is not None:
            add_hook_to_module(model, OffloadBefore(hooks), append=True)
    return hooks


def model_offload(chain: Iterable[torch.nn.Module | None], device: str) -> list[UserCpuOffloadHook]:
    """Low mode: one model on `device` at a time, in the order of `chain` (how DiffusionPipeline's
    enable_model_cpu_offload chains model_cpu_offload_seq). Call offload_all after each pipeline call."""
    hooks: list[UserCpuOffloadHook] = []
    previous: UserCpuOffloadHook | None = None
    for model in chain:
        if model is None:
            continue
        _, previous = cpu_offload_with_hook(model, device, prev_module_hook=previous)
        hooks.append(previous)
    return hooks


def offload_all(hooks: Iterable[UserCpuOffloadHook]) -> None:
    """Send every model of a model_offload chain back to the CPU (the last one stays on the device otherwise)."""
    for hook in hooks:
        hook.offload()


def sequential_offload(models: Iterable[Any], device: str, streamed: torch.nn.Module | None = None) -> None:
    """Minimal mode: each model's weights wait on the CPU and move to `device` one layer at a time (diffusers'
    leaf-level group offloading). Models are moved to the CPU first.

    On CUDA the `streamed` model (the denoiser, which runs every step) prefetches its next layer on a side
    stream. Only it: with a stream, group offloading restores each layer from pinned copies taken when it was
    applied, which would undo a dtype change made later, and diffusers' SDXL pipeline casts an fp16 VAE to fp32
    for each decode (force_upcast). The text encoders and the VAE run once per image: streams buy little there.
    """
    cuda = device.startswith("cuda")
    for model in models:
        if isinstance(model, torch.nn.Module):
            model.to("cpu")
            apply_group_offloading(
                model,
                onload_device=torch.device(device),
                offload_device=torch.device("cpu"),
                offload_type="leaf_level",
                use_stream=cuda and model is streamed,
            )


def remove_hooks(models: Iterable[Any]) -> None:
    """Take every accelerate hook and every group-offloading hook off `models` and their submodules. Weights
    stay where the hooks left them (the CPU after offloading): the caller moves the models."""
    for model in models:
        if not isinstance(model, torch.nn.Module):
            continue
        if any(hasattr(module, "_hf_hook") for module in model.modules()):
            remove_hook_from_module(model, recurse=True)
        for module in model.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is None:
                continue
            for name in _GROUP_OFFLOAD_HOOKS:
                if registry.get_hook(name) is not None:
                    registry.remove_hook(name, recurse=False)


def has_hooks(model: torch.nn.Module) -> bool:
    """True when an accelerate hook or a diffusers group-offloading hook sits on `model` or a submodule."""
    for module in model.modules():
        if hasattr(module, "_hf_hook"):
            return True
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and any(registry.get_hook(name) is not None for name in _GROUP_OFFLOAD_HOOKS):
            return True
    return False


def group_offloaded(model: torch.nn.Module) -> bool:
    """True when diffusers' group offloading is on for `model`."""
    return bool(_is_group_offload_enabled(model))


def log_memory_mode(spec: ModelSpec, mode: MemoryMode, runtime: RuntimeOptions) -> None:
    """At load: `model X: memory mode Y (auto: Z GiB usable)`."""
    if spec.memory != "auto":
        why = "configured"
    else:
        budget = device_budget(runtime)
        why = f"auto: {gib(budget)} usable" if budget is not None else f"auto: {runtime.device} reports no memory limit"
    log.info("model %s: memory mode %s (%s)", spec.name, mode, why)
