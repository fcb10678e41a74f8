"""A stand-in for the one torchvision call diffusers' Cosmos transformer (Anima's DiT) makes.

`CosmosTransformer3DModel.forward` resizes its padding mask with
`transforms.functional.resize(mask, size, interpolation=transforms.InterpolationMode.NEAREST)`, where
`transforms` is `torchvision.transforms`, imported at module load only when torchvision is installed.
torchvision from PyPI does not load beside the CPU torch wheel, so without it the forward pass fails with
`NameError: transforms`. `install()` gives that module a minimal `transforms` object whose nearest resize
is `torch.nn.functional.interpolate(mode="nearest")` (what torchvision does for NEAREST on tensors).
With real torchvision present (GPU installs), it does nothing.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from types import ModuleType, SimpleNamespace

import torch
import torch.nn.functional as F

_COSMOS_MODULE = "diffusers.models.transformers.transformer_cosmos"
_lock = threading.Lock()


class InterpolationMode(enum.Enum):
    """The subset of torchvision's InterpolationMode the shim understands."""

    NEAREST = "nearest"


def _target_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = [size]
    size = list(size)
    if len(size) == 2:
        return int(size[0]), int(size[1])
    if len(size) == 1:  # torchvision: the shorter edge becomes `size`, the aspect ratio is kept
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = int(size[0]), int(int(size[0]) * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    raise ValueError(f"resize: size must have 1 or 2 elements, got {size}")


def resize(
    img: torch.Tensor,
    size: int | Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.NEAREST,
    max_size: int | None = None,
    antialias: bool | None = True,
) -> torch.Tensor:
    """Nearest-neighbour resize of a tensor shaped (..., H, W), like torchvision's for NEAREST."""
    if getattr(interpolation, "value", interpolation) != InterpolationMode.NEAREST.value:
        raise NotImplementedError("the torchvision shim only implements InterpolationMode.NEAREST")
    if max_size is not None:
        raise NotImplementedError("the torchvision shim does not implement max_size")
    if img.ndim < 2:
        raise ValueError(f"resize: expected a tensor with at least 2 dimensions, got shape {tuple(img.shape)}")
    height, width = img.shape[-2:]
    out_h, out_w = _target_size(height, width, size)
    lead = img.shape[:-2]
    flat = img.reshape(1, -1, height, width)
    dtype = img.dtype
    if not flat.is_floating_point():
        flat = flat.to(torch.float32)
    out = F.interpolate(flat, size=(out_h, out_w), mode="nearest")
    return out.to(dtype).reshape(*lead, out_h, out_w)


def _make_transforms() -> SimpleNamespace:
    return SimpleNamespace(
        functional=SimpleNamespace(resize=resize),
        InterpolationMode=InterpolationMode,
    )


def install() -> None:
    """Give diffusers' transformer_cosmos module a `transforms` if it has none. Idempotent, thread-safe."""
    import importlib

    with _lock:
        module: ModuleType = importlib.import_module(_COSMOS_MODULE)
        if getattr(module, "transforms", None) is not None:
            return  # real torchvision (imported by diffusers) or our shim, already there
        module.transforms = _make_transforms()  # type: ignore[attr-defined]
