"""Choosing the torch device and dtype for a model family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inference.specs import Family, RuntimeOptions

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(preference: str) -> str:
    """"auto" picks CUDA, then Apple MPS, then the CPU. An explicit choice is checked."""
    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was asked for but CUDA is not available")
    if preference == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but Apple MPS is not available")
    return preference


def resolve_dtype(preference: str | None, device: str, family: Family) -> torch.dtype:
    """fp16 for SDXL on a GPU (its VAE is upcast by diffusers when needed), bf16 for Anima where the
    GPU has it (Qwen3 and the DiT overflow in fp16), fp32 on the CPU."""
    if preference and preference != "auto":
        return _DTYPES[preference]
    if device.startswith("cuda"):
        if family == "anima":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float16
    if device == "mps":
        return torch.float16 if family == "sdxl" else torch.float32
    return torch.float32


class DecodeOutOfMemory(MemoryError):
    """Out of memory in the VAE decode, after every denoising step. `resume()` decodes the kept (final)
    latents again in whatever memory mode the model is in by then, without redoing the steps. It holds CPU
    copies of the latents only, so keeping it does not keep device memory alive."""

    def __init__(self, message: str, resume: Callable[[], list[Any]]) -> None:
        super().__init__(message)
        self.resume = resume


def is_out_of_memory(error: BaseException) -> bool:
    """An out-of-memory error from torch (CUDA, MPS) or Python."""
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_device_memory(device: str) -> None:
    """Return cached allocator blocks to the driver after a model is dropped or an OOM."""
    import gc

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def device_budget(runtime: RuntimeOptions) -> int | None:
    """Bytes of device memory this process may use for a model and its jobs: what the device has free plus
    what this process already holds (its loaded model counts as usable), capped by runtime.vram_limit.
    None on a device that does not report its memory (the CPU, MPS) and with no limit configured."""
    limit = runtime.vram_limit
    if runtime.device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(runtime.device).index
        index = torch.cuda.current_device() if index is None else index
        free, _total = torch.cuda.mem_get_info(index)
        usable = int(free + torch.cuda.memory_reserved(index))
        return usable if limit is None else min(usable, limit)
    return limit


def module_bytes(*modules: torch.nn.Module | None) -> int:
    """Bytes of the parameters and buffers of `modules` (None is skipped), at the dtype they are held in."""
    total = 0
    for module in modules:
        if module is None:
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            total += tensor.numel() * tensor.element_size()
    return total


def make_runtime(
    device: str, dtype: str, cache_dir: Path, local_files_only: bool = False, vram_limit: int | None = None
) -> RuntimeOptions:
    """RuntimeOptions with the device resolved ("auto" → the best one present)."""
    return RuntimeOptions(
        device=resolve_device(device),
        dtype=None if dtype == "auto" else dtype,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        vram_limit=vram_limit,
    )


def device_free(runtime: RuntimeOptions) -> int | None:
    """Bytes free on the CUDA device now (what other processes and this one leave), None on another device."""
    if runtime.device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(runtime.device).index
        index = torch.cuda.current_device() if index is None else index
        free, _total = torch.cuda.mem_get_info(index)
        return int(free)
    return None
