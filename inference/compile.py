"""`compile = true`: torch.compile of the denoiser (SDXL UNet, Anima DiT) and channels_last where it helps.

Only on CUDA by default: there torch.compile (inductor) fuses the UNet's / DiT's elementwise kernels around
SDPA (which stays: inductor keeps scaled_dot_product_attention as one flash / memory-efficient kernel) and
typically gains 10-30 % per step on big cards; on the CPU or MPS it costs minutes of compilation for little, so
it is skipped with a log line. The model is compiled in place (`module.compile()`): the module object stays the
same, so the memory modes' accelerate hooks and ModelCache's moves keep working (the hooks' pre_forward runs
outside the graph: accelerate marks it compiler-disabled).

The first call at a new image shape compiles (tens of seconds); the backends warm up at load with one short
generation at the model's typical size, so no user waits for that. Other sizes compile once each, then run at
full speed (torch marks the shape dynamic after the second one it sees).

channels_last (SDXL UNet and VAE on CUDA): NHWC convolutions are what cuDNN's fp16 tensor-core kernels want,
which saves the layout transposes around each conv. The DiT is a transformer (linear layers): no gain there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class CompileSettings:
    """How models are compiled. Tests set backend="eager" and on_cpu=True to run the path on the CPU."""

    backend: str = "inductor"
    mode: str | None = None  # e.g. "max-autotune": longer compilation, a little faster
    on_cpu: bool = False


SETTINGS = CompileSettings()


def should_compile(name: str, device: str) -> bool:
    """True when `compile = true` takes effect on `device`; logs why not otherwise."""
    if device.startswith("cuda") or SETTINGS.on_cpu:
        return True
    log.info("model %s: compile = true skipped on %s (torch.compile only pays off on CUDA)", name, device)
    return False


def compile_module(module: torch.nn.Module) -> None:
    """torch.compile `module` in place (its object, hooks and parameters stay the same)."""
    module.compile(backend=SETTINGS.backend, mode=SETTINGS.mode)


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def use_channels_last(*modules: torch.nn.Module | None) -> None:
    """NHWC weights for convolutional models (in place)."""
    for module in modules:
        if module is not None:
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
