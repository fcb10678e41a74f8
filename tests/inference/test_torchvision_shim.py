"""The torchvision stand-in used by diffusers' Cosmos transformer (Anima's DiT)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from inference import torchvision_shim

COSMOS = "diffusers.models.transformers.transformer_cosmos"


@pytest.fixture
def cosmos_module(monkeypatch: pytest.MonkeyPatch) -> object:
    """diffusers' transformer_cosmos module with no `transforms` (restored after the test)."""
    module = importlib.import_module(COSMOS)
    monkeypatch.delattr(module, "transforms", raising=False)
    return module


@pytest.mark.parametrize(
    ("shape", "size"),
    [((1, 1, 64, 64), [8, 8]), ((1, 1, 64, 48), [7, 5]), ((2, 3, 16, 16), [32, 24]), ((1, 40, 40), [5, 5])],
)
def test_resize_is_nearest_interpolate(shape: tuple[int, ...], size: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(shape, generator=g) > 0.5).to(torch.float32)
    flat = mask.reshape(1, -1, *shape[-2:])
    expected = F.interpolate(flat, size=size, mode="nearest").reshape(*shape[:-2], *size)
    shim = torchvision_shim._make_transforms()
    out = shim.functional.resize(mask, size, interpolation=shim.InterpolationMode.NEAREST)
    assert out.shape == expected.shape
    assert torch.equal(out, expected)


def test_resize_keeps_dtype_of_integer_masks() -> None:
    mask = torch.randint(0, 2, (1, 1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    out = torchvision_shim.resize(mask, [4, 4])
    assert out.dtype == torch.int64
    assert torch.equal(out, F.interpolate(mask.float(), size=[4, 4], mode="nearest").long())


def test_resize_single_size_keeps_aspect_like_torchvision() -> None:
    out = torchvision_shim.resize(torch.zeros(1, 1, 32, 64), 8)
    assert out.shape[-2:] == (8, 16)


def test_install_adds_shim_once(cosmos_module: object) -> None:
    assert getattr(cosmos_module, "transforms", None) is None
    torchvision_shim.install()
    first = cosmos_module.transforms  # type: ignore[attr-defined]
    assert first.functional.resize is torchvision_shim.resize
    assert first.InterpolationMode.NEAREST is torchvision_shim.InterpolationMode.NEAREST
    torchvision_shim.install()
    assert cosmos_module.transforms is first  # type: ignore[attr-defined]


def test_install_is_a_no_op_when_transforms_exist(cosmos_module: object, monkeypatch: pytest.MonkeyPatch) -> None:
    real = SimpleNamespace(functional=SimpleNamespace(resize=None), InterpolationMode=None)  # stands for torchvision
    monkeypatch.setattr(cosmos_module, "transforms", real, raising=False)
    torchvision_shim.install()
    assert cosmos_module.transforms is real  # type: ignore[attr-defined]


def test_cosmos_forward_runs_with_shim(cosmos_module: object) -> None:
    from diffusers import CosmosTransformer3DModel

    torchvision_shim.install()
    torch.manual_seed(0)
    model: Any = CosmosTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        text_embed_dim=16,
        adaln_lora_dim=4,
        max_size=(2, 16, 16),
        extra_pos_embed_type=None,
    )
    model.eval()
    hidden = torch.randn(1, 4, 1, 8, 8)
    with torch.no_grad():
        out = model(
            hidden_states=hidden,
            timestep=torch.tensor([0.5]),
            encoder_hidden_states=torch.randn(1, 5, 16),
            padding_mask=torch.zeros(1, 1, 64, 64),
            return_dict=False,
        )[0]
    assert out.shape == hidden.shape
