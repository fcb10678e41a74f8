"""`compile = true`: the denoiser is torch.compiled in place and warmed up once at load, at the model's typical
size; on the CPU it is skipped with a log line. The compile path runs here with torch's "eager" backend
(dynamo traces the model, no code generation), which keeps it quick."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import compile as compiling
from inference.backends.anima import AnimaBackend, load_anima
from inference.backends.sdxl import SDXLBackend, load_sdxl
from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
from inference.types import CancelToken, GenerationParams, ProgressCallback

SDXL = ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), size_scale=0.0625, compile=True)
ANIMA = ModelSpec("tiny-anima", "anima", "anima", BuiltinSource("tiny-anima"), size_scale=0.0625, compile=True)
PARAMS = GenerationParams("1girl", "lowres", 64, 64, 2, 5.0, (4,), "euler_a")


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory) -> RuntimeOptions:
    cache = Path(tmp_path_factory.getbasetemp()) / "compile-models"
    return RuntimeOptions(device="cpu", dtype=None, cache_dir=cache, local_files_only=True)


@pytest.fixture
def eager_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiling, "SETTINGS", compiling.CompileSettings(backend="eager", on_cpu=True))


def record_generate(monkeypatch: pytest.MonkeyPatch, cls: type[SDXLBackend] | type[AnimaBackend]) -> list[int]:
    """Patch cls.generate to record the width of every call."""
    widths: list[int] = []
    original = cls.generate

    def generate(
        self: SDXLBackend, params: GenerationParams, progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[object]:
        widths.append(params.width)
        return original(self, params, progress, cancel)  # type: ignore[arg-type, return-value]

    monkeypatch.setattr(cls, "generate", generate)
    return widths


@pytest.mark.usefixtures("eager_on_cpu")
def test_sdxl_unet_is_compiled_and_warmed_up_once_at_load(
    runtime: RuntimeOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    widths = record_generate(monkeypatch, SDXLBackend)
    loaded = load_sdxl(SDXL, runtime)
    assert compiling.is_compiled(loaded.pipeline.unet)
    assert not compiling.is_compiled(loaded.pipeline.vae)
    assert widths == [64]  # one warm-up, at the typical size (1024 x 1/16)
    plain = load_sdxl(ModelSpec("plain", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl")), runtime)
    expected = np.asarray(plain.generate(PARAMS)[0])
    assert np.array_equal(np.asarray(loaded.generate(PARAMS)[0]), expected)
    loaded.set_memory_mode("balanced")  # the offload hooks wrap the compiled UNet
    assert compiling.is_compiled(loaded.pipeline.unet)
    assert np.array_equal(np.asarray(loaded.generate(PARAMS)[0]), expected)


@pytest.mark.usefixtures("eager_on_cpu")
def test_anima_dit_is_compiled_and_warmed_up_once_at_load(
    runtime: RuntimeOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    widths = record_generate(monkeypatch, AnimaBackend)
    loaded = load_anima(ANIMA, runtime)
    assert compiling.is_compiled(loaded.pipeline.transformer)
    assert widths == [64]


def test_compile_is_skipped_on_the_cpu_with_a_log_line(
    runtime: RuntimeOptions, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inference")
    widths = record_generate(monkeypatch, SDXLBackend)
    loaded = load_sdxl(SDXL, runtime)
    assert not compiling.is_compiled(loaded.pipeline.unet)
    assert widths == []  # no warm-up either
    assert "model tiny-sdxl: compile = true skipped on cpu" in caplog.text
