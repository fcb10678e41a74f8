"""LoRAs in every memory mode of the real backends (tiny models, CPU): loading one leaves the mode's hooks exactly as
they were (diffusers' own load_lora_weights would replace balanced mode's hooks with enable_model_cpu_offload), the
images with the LoRA are the same in every mode, and without it the same as before any LoRA.

The LoRA is applied around `backend.generate` here, as the backends do it around their pipeline calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference.backends.anima import AnimaBackend, load_anima
from inference.backends.base import Backend
from inference.backends.sdxl import SDXLBackend, load_sdxl
from inference.lora_adapters import LoraAdapters
from inference.loras import file_hashes
from inference.memory import MEMORY_MODES
from inference.offload import group_offloaded
from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
from inference.tiny.lora import tiny_anima_lora, tiny_sdxl_lora, write_lora
from inference.types import GenerationParams, LoraFile

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> RuntimeOptions:
    return RuntimeOptions(device="cpu", dtype=None, cache_dir=tmp_path_factory.mktemp("models"), local_files_only=True)


@pytest.fixture(scope="module")
def sdxl(runtime: RuntimeOptions) -> SDXLBackend:
    spec = ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory="high")
    return load_sdxl(spec, runtime)


@pytest.fixture(scope="module")
def anima(runtime: RuntimeOptions) -> AnimaBackend:
    spec = ModelSpec("tiny-anima", "anima", "anima", BuiltinSource("tiny-anima"), size_scale=0.125, memory="high")
    return load_anima(spec, runtime)


def lora(path: Path, weight: float) -> LoraFile:
    return LoraFile(path.stem, path, file_hashes(path)[0], weight)


def hooks(pipe: Any) -> dict[str, tuple[str, bool]]:
    """Per model: its accelerate hook's class (or none) and whether it is group offloaded."""
    return {
        name: (type(getattr(module, "_hf_hook", None)).__name__, group_offloaded(module))
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def pixels(backend: Backend, params: GenerationParams) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB")) for image in backend.generate(params)]


def check_every_mode(backend: SDXLBackend | AnimaBackend, params: GenerationParams, file: LoraFile) -> None:
    pipe = backend.pipeline
    backend.set_memory_mode("high")
    plain = pixels(backend, params)
    first = LoraAdapters(pipe)
    with first.applied([file]):
        expected = pixels(backend, params)
    first.clear()
    assert not np.array_equal(expected[0], plain[0])
    try:
        for mode in MEMORY_MODES:
            backend.set_memory_mode(mode)
            before = hooks(pipe)
            adapters = LoraAdapters(pipe)  # loaded under this mode's hooks
            with adapters.applied([file]):
                assert hooks(pipe) == before, mode
                got = pixels(backend, params)
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), mode
            assert all(np.array_equal(a, b) for a, b in zip(plain, pixels(backend, params), strict=True)), mode
            adapters.clear()
            assert hooks(pipe) == before, mode
        # Adapters loaded once, then the modes switched under them: the LoRA layers move with their models.
        adapters = LoraAdapters(pipe)
        for mode in (*MEMORY_MODES, "high"):
            backend.set_memory_mode(mode)
            with adapters.applied([file]):
                got = pixels(backend, params)
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), mode
        assert adapters.loads == 1
        adapters.clear()
    finally:
        backend.set_memory_mode("high")


@pytest.mark.parametrize("prompt", ["1girl, solo, smile", "1girl, (smile:1.3), [blurry]"])
def test_sdxl_lora_in_every_memory_mode(sdxl: SDXLBackend, tmp_path: Path, prompt: str) -> None:
    file = lora(write_lora(tmp_path / "style.safetensors", tiny_sdxl_lora("kohya")), 0.8)
    check_every_mode(sdxl, GenerationParams(prompt, "lowres", SIZE, SIZE, 2, 5.0, (7,), "euler_a"), file)


@pytest.mark.parametrize("prompt", ["1girl, solo", "1girl, (solo:1.3), [blurry]"])
def test_anima_lora_in_every_memory_mode(anima: AnimaBackend, tmp_path: Path, prompt: str) -> None:
    """The DiT and the LLM adapter (text_conditioner) both get the LoRA; the weighted prompt runs the backend's own
    text-conditioning block, which calls the adapter with its LoRA layers."""
    file = lora(write_lora(tmp_path / "style.safetensors", tiny_anima_lora("comfyui", scale=4.0)), 0.8)
    check_every_mode(anima, GenerationParams(prompt, "lowres", SIZE, SIZE, 2, 4.0, (7,), "flow_euler"), file)
