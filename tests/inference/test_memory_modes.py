"""Memory modes on the tiny models (CPU): each mode switches on exactly the diffusers features it names,
observable on the pipeline; the images do not change from mode to mode (slicing, tiling below one tile and
offloading leave the arithmetic alone); switching back leaves no hook behind; offload / activate / unload
work in every mode; `auto` picks at load from the usable memory and says so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from accelerate.hooks import CpuOffload
from PIL import Image

from inference.backends.anima import AnimaBackend, load_anima
from inference.backends.base import Backend
from inference.backends.sdxl import SDXLBackend, load_sdxl
from inference.cache import ModelCache
from inference.memory import MEMORY_MODES, REFERENCE_FOOTPRINTS, estimate_peak, gib, plan_job
from inference.offload import OffloadBefore, group_offloaded, has_hooks
from inference.specs import BuiltinSource, MemoryMode, MemorySetting, ModelSpec, RuntimeOptions
from inference.types import GenerationParams, LoadProgressCallback, WorkItem
from inference.worker import GpuWorker
from tests.inference.test_worker import Source

SIZE = 64  # below every tile edge: no mode tiles this image
PLAIN = "1girl, solo, smile"
WEIGHTED = "1girl, (smile:1.3), [blurry]"  # SDXL: the compel path; Anima: the weighted text-encoder step


def sdxl_spec(memory: MemorySetting = "auto") -> ModelSpec:
    return ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory=memory)


def anima_spec(memory: MemorySetting = "auto") -> ModelSpec:
    return ModelSpec("tiny-anima", "anima", "anima", BuiltinSource("tiny-anima"), size_scale=0.125, memory=memory)


def sdxl_params(prompt: str = PLAIN) -> GenerationParams:
    return GenerationParams(prompt, "lowres", SIZE, SIZE, 2, 5.0, (7, 8), "euler_a")


def anima_params(prompt: str = PLAIN) -> GenerationParams:
    return GenerationParams(prompt, "lowres", SIZE, SIZE, 2, 4.0, (7, 8), "flow_euler")


def pixels(images: list[Any]) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB")) for image in images]


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
    return load_sdxl(sdxl_spec("high"), runtime)


@pytest.fixture(scope="module")
def anima(runtime: RuntimeOptions) -> AnimaBackend:
    return load_anima(anima_spec("high"), runtime)


def modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def hooked(pipe: Any) -> set[str]:
    return {name for name, module in modules(pipe).items() if has_hooks(module)}


# -- features per mode -------------------------------------------------------------------------------


def test_sdxl_features_of_each_mode(sdxl: SDXLBackend) -> None:
    pipe = sdxl.pipeline
    try:
        sdxl.set_memory_mode("high")
        assert sdxl.memory_mode == "high"
        assert pipe.vae.use_slicing and not pipe.vae.use_tiling
        assert hooked(pipe) == set()

        sdxl.set_memory_mode("balanced")
        assert pipe.vae.use_slicing and pipe.vae.use_tiling
        assert (pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size) == (1024, 1024 // pipe.vae_scale_factor)
        assert hooked(pipe) == {"text_encoder", "text_encoder_2", "unet", "vae"}
        for name in ("text_encoder", "text_encoder_2"):
            hook = getattr(pipe, name)._hf_hook
            assert isinstance(hook, CpuOffload) and str(hook.execution_device) == "cpu"
        assert isinstance(pipe.unet._hf_hook, OffloadBefore)
        # Image to image: the text encoders leave before the VAE encodes the source, not only before the UNet.
        assert isinstance(pipe.vae.encoder._hf_hook, OffloadBefore) and not hasattr(pipe.vae, "_hf_hook")
        assert [h.model for h in pipe.vae.encoder._hf_hook.previous] == [pipe.text_encoder, pipe.text_encoder_2]
        assert pipe._all_hooks == []  # not diffusers' model offload

        sdxl.set_memory_mode("low")
        assert pipe.vae.use_slicing and pipe.vae.use_tiling
        assert len(pipe._all_hooks) == 4  # enable_model_cpu_offload over text_encoder(_2), unet, vae
        assert hooked(pipe) == {"text_encoder", "text_encoder_2", "unet", "vae"}
        assert all(isinstance(m._hf_hook, CpuOffload) for m in modules(pipe).values())
        assert not any(group_offloaded(m) for m in modules(pipe).values())

        sdxl.set_memory_mode("minimal")
        assert pipe.vae.use_slicing and pipe.vae.use_tiling
        assert (pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size) == (512, 512 // pipe.vae_scale_factor)
        assert all(group_offloaded(m) for m in modules(pipe).values())
        assert not any(hasattr(m, "_hf_hook") for m in modules(pipe).values())
        assert pipe._all_hooks == []

        sdxl.set_memory_mode("high")  # and back: nothing left
        assert hooked(pipe) == set() and not pipe.vae.use_tiling
        assert pipe.vae.tile_sample_min_size == pipe.vae.config.sample_size
    finally:
        sdxl.set_memory_mode("high")


def test_anima_features_of_each_mode(anima: AnimaBackend) -> None:
    pipe = anima.pipeline
    try:
        anima.set_memory_mode("high")
        assert pipe.vae.use_slicing and not pipe.vae.use_tiling
        assert hooked(pipe) == set()

        anima.set_memory_mode("balanced")
        assert pipe.vae.use_tiling and (pipe.vae.tile_sample_min_height, pipe.vae.tile_sample_min_width) == (256, 256)
        assert hooked(pipe) == {"text_encoder", "text_conditioner", "vae"}
        assert isinstance(pipe.text_encoder._hf_hook, CpuOffload)
        assert isinstance(pipe.text_conditioner._hf_hook, OffloadBefore)
        assert [h.model for h in pipe.vae.encoder._hf_hook.previous] == [pipe.text_encoder]

        anima.set_memory_mode("low")
        assert hooked(pipe) == {"text_encoder", "text_conditioner", "transformer", "vae"}
        chain = [pipe.text_encoder, pipe.text_conditioner, pipe.transformer, pipe.vae]
        assert [m._hf_hook.prev_module_hook.model if m._hf_hook.prev_module_hook else None for m in chain] == [
            None,
            *chain[:-1],
        ]
        assert [h.model for h in pipe.vae.encoder._hf_hook.previous] == [pipe.text_encoder]  # before an encode

        anima.set_memory_mode("minimal")
        assert all(group_offloaded(m) for m in modules(pipe).values())
        assert pipe._execution_device == torch.device("cpu")

        anima.set_memory_mode("high")
        assert hooked(pipe) == set() and not pipe.vae.use_tiling
    finally:
        anima.set_memory_mode("high")


# -- the same pixels in every mode ---------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [PLAIN, WEIGHTED])
def test_sdxl_images_are_identical_in_every_mode_and_after_switching_back(sdxl: SDXLBackend, prompt: str) -> None:
    sdxl.set_memory_mode("high")
    expected = pixels(sdxl.generate(sdxl_params(prompt)))
    assert not np.array_equal(expected[0], expected[1])
    try:
        for mode in (*MEMORY_MODES, "high"):
            sdxl.set_memory_mode(mode)
            got = pixels(sdxl.generate(sdxl_params(prompt)))
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), mode
    finally:
        sdxl.set_memory_mode("high")


@pytest.mark.parametrize("prompt", [PLAIN, WEIGHTED])
def test_anima_images_are_identical_in_every_mode_and_after_switching_back(anima: AnimaBackend, prompt: str) -> None:
    anima.set_memory_mode("high")
    expected = pixels(anima.generate(anima_params(prompt)))
    try:
        for mode in (*MEMORY_MODES, "high"):
            anima.set_memory_mode(mode)
            got = pixels(anima.generate(anima_params(prompt)))
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), mode
    finally:
        anima.set_memory_mode("high")


# -- residency in every mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_offload_activate_keep_working_in_every_mode(sdxl: SDXLBackend, anima: AnimaBackend, mode: MemoryMode) -> None:
    for backend, params in ((sdxl, sdxl_params()), (anima, anima_params())):
        backend.set_memory_mode("high")
        expected = pixels(backend.generate(params))
        try:
            backend.set_memory_mode(mode)
            backend.offload()  # ModelCache parks the model: no hook stays behind
            assert hooked(backend.pipeline) == set()
            assert backend.memory_mode == mode
            got = pixels(backend.generate(params))  # generate re-activates a parked model, in its mode
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
            assert (hooked(backend.pipeline) != set()) == (mode != "high")
            backend.offload()
            backend.set_memory_mode(mode)  # parked: only recorded
            assert hooked(backend.pipeline) == set()
            backend.activate()
            assert (hooked(backend.pipeline) != set()) == (mode != "high")
            got = pixels(backend.generate(params))
            assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
        finally:
            backend.set_memory_mode("high")


@pytest.mark.parametrize("mode", ["balanced", "low", "minimal"])
def test_unload_in_an_offload_mode(runtime: RuntimeOptions, mode: MemoryMode) -> None:
    loaded = load_sdxl(sdxl_spec(mode), runtime)
    assert loaded.memory_mode == mode and hooked(loaded.pipeline) != set()
    pipe = loaded.pipeline
    loaded.unload()
    assert hooked(pipe) == set()
    with pytest.raises(RuntimeError, match="unloaded"):
        loaded.generate(sdxl_params())


# -- auto at load --------------------------------------------------------------------------------------


def test_auto_picks_the_mode_from_the_usable_memory_and_logs_it(
    runtime: RuntimeOptions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inference")
    plenty = load_anima(anima_spec(), runtime)  # the CPU reports no limit: high
    assert plenty.memory_mode == "high"
    assert "model tiny-anima: memory mode high (auto: cpu reports no memory limit)" in caplog.text

    footprint = plenty.footprint()
    typical = footprint.typical_px
    limit = estimate_peak(footprint, typical, typical, 1, "low")  # a card where only low fits a typical image
    assert estimate_peak(footprint, typical, typical, 1, "balanced") > limit
    plenty.unload()
    small = RuntimeOptions(runtime.device, None, runtime.cache_dir, True, vram_limit=limit)
    tight = load_anima(anima_spec(), small)
    assert tight.memory_mode == "low" and hooked(tight.pipeline) == {
        "text_encoder", "text_conditioner", "transformer", "vae"
    }
    assert f"model tiny-anima: memory mode low (auto: {gib(limit)} usable)" in caplog.text
    tight.unload()

    configured = load_sdxl(sdxl_spec("minimal"), small)
    assert configured.memory_mode == "minimal"
    assert "model tiny-sdxl: memory mode minimal (configured)" in caplog.text


# -- the worker runs a job in the mode its plan says ---------------------------------------------------


async def test_a_job_planned_in_a_lower_mode_runs_there_and_gives_the_same_images(
    runtime: RuntimeOptions, tmp_path: Path
) -> None:
    """The tiny model with Animagine XL's real footprint (its weights are too small for a budget between
    the modes: minimal's fixed resident share would be the largest), so the plan is what a real card gets."""
    backend = load_sdxl(sdxl_spec("high"), runtime)
    params = sdxl_params()
    expected = pixels(backend.generate(params))
    footprint = REFERENCE_FOOTPRINTS["sdxl"]
    backend.footprint = lambda: footprint  # type: ignore[method-assign]
    limit = estimate_peak(footprint, SIZE, SIZE, params.count, "low")
    plan = plan_job(limit, footprint, SIZE, SIZE, params.count)
    assert plan is not None and plan.mode == "low"  # precondition: high and balanced do not fit
    modes: list[tuple[MemoryMode, bool]] = []
    switch = backend.set_memory_mode

    def recording(mode: MemoryMode) -> None:
        switch(mode)
        modes.append((mode, len(backend.pipeline._all_hooks) > 0))

    backend.set_memory_mode = recording  # type: ignore[method-assign]

    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        return backend

    limited = RuntimeOptions(runtime.device, None, runtime.cache_dir, True, vram_limit=limit)
    source = Source()
    worker = GpuWorker(source, ModelCache(limited, loader=loader))
    item = WorkItem(1, sdxl_spec("high"), params, (tmp_path / "a.png", tmp_path / "b.png"))
    worker.start()
    try:
        await source.items.put(item)
        outcome, _, saved = await asyncio.wait_for(source.finished.get(), 120)
    finally:
        await worker.stop()
    assert outcome == "done"
    assert modes == [("low", True), ("high", False)]  # model CPU offload for the job, then its own mode back
    got = [np.asarray(Image.open(image.path).convert("RGB")) for image in saved]  # type: ignore[attr-defined]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_the_cache_parks_and_brings_back_models_in_their_modes(runtime: RuntimeOptions) -> None:
    cache = ModelCache(runtime, capacity=2, location="cpu")
    low = cache.get(sdxl_spec("low"))
    expected = pixels(low.generate(sdxl_params()))
    balanced = cache.get(anima_spec("balanced"))
    assert isinstance(low, SDXLBackend) and isinstance(balanced, AnimaBackend)
    assert hooked(low.pipeline) == set() and low.memory_mode == "low"  # parked: weights in RAM, no hooks
    assert hooked(balanced.pipeline) == {"text_encoder", "text_conditioner", "vae"}
    assert cache.get(sdxl_spec("low")) is low
    assert len(low.pipeline._all_hooks) == 4 and hooked(balanced.pipeline) == set()
    assert all(np.array_equal(a, b) for a, b in zip(expected, pixels(low.generate(sdxl_params())), strict=True))
    cache.clear()
