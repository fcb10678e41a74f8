"""GpuWorker and memory: the pre-flight refusal, a job planned in a lower mode or in smaller calls, and the
out-of-memory fallback that steps down one mode per error without the step counter going back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inference.backends.base import Backend
from inference.backends.sdxl import SDXLBackend, load_sdxl
from inference.cache import ModelCache
from inference.memory import estimate_peak, plan_job, reference_footprint
from inference.specs import BuiltinSource, MemoryMode, ModelSpec, RuntimeOptions
from inference.types import GenerationParams, LoadProgressCallback, StepProgress, WorkItem
from inference.worker import GpuWorker
from tests.inference.test_worker import SPEC, Scripted, Source

STEPS = 4
EIGHT = (1, 2, 3, 4, 5, 6, 7, 8)


class Recording(Source):
    """A Source that also keeps every progress report."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: list[tuple[int, int]] = []

    def on_progress(self, job_id: int, progress: StepProgress) -> None:
        self.progress.append((progress.step, progress.total))


def make(
    tmp_path: Path, backend: Backend, vram_limit: int | None = None
) -> tuple[GpuWorker, Recording, list[ModelSpec]]:
    loads: list[ModelSpec] = []

    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        loads.append(spec)
        return backend

    runtime = RuntimeOptions(device="cpu", dtype=None, cache_dir=tmp_path, vram_limit=vram_limit)
    source = Recording()
    return GpuWorker(source, ModelCache(runtime, loader=loader)), source, loads


def job(tmp_path: Path, seeds: tuple[int, ...], size: int = 64) -> WorkItem:
    params = GenerationParams("1girl", "", size, size, STEPS, 5.0, seeds, "euler_a")
    return WorkItem(1, SPEC, params, tuple(tmp_path / f"1-{i}.png" for i in range(len(seeds))))


async def run(worker: GpuWorker, source: Source, item: WorkItem) -> tuple[str, int, object]:
    worker.start()
    try:
        await source.items.put(item)
        return await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()


def never_called(params: GenerationParams) -> None:
    raise AssertionError("no step may run")


def nothing(params: GenerationParams) -> None:
    pass


def assert_never_goes_back(progress: list[tuple[int, int]]) -> None:
    steps = [step for step, _ in progress]
    assert steps == sorted(steps)
    assert all(step <= total for step, total in progress)
    assert progress[-1][0] == progress[-1][1]  # it ends full


# -- pre-flight ---------------------------------------------------------------------------------------


async def test_a_job_that_fits_in_no_mode_fails_before_loading_and_before_any_step(tmp_path: Path) -> None:
    backend = Scripted(never_called)
    worker, source, loads = make(tmp_path, backend, vram_limit=64 * 1024**2)  # 64 MiB: not even minimal
    assert worker.plan(SPEC, 1024, 1024, 1) is None
    outcome, job_id, message = await run(worker, source, job(tmp_path, (1,), size=1024))
    assert (outcome, job_id) == ("failed", 1)
    need = estimate_peak(reference_footprint(SPEC), 1024, 1024, 1, "minimal", 1)
    assert message == (
        f"This needs about {need / 1024**3:.1f} GiB of GPU memory and 0.1 GiB is usable. Try a smaller size."
    )
    assert loads == [] and backend.calls == [] and source.progress == []


async def test_a_job_that_fits_only_in_a_lower_mode_runs_there_and_the_model_comes_back(tmp_path: Path) -> None:
    footprint = reference_footprint(SPEC)
    limit = estimate_peak(footprint, 1024, 1024, 1, "low")
    assert estimate_peak(footprint, 1024, 1024, 1, "balanced") > limit  # precondition: high and balanced do not fit
    backend = Scripted(nothing)
    worker, source, _ = make(tmp_path, backend, vram_limit=limit)
    outcome, _, _ = await run(worker, source, job(tmp_path, (1,), size=1024))
    assert outcome == "done"
    assert backend.calls == [("low", (1,))]
    assert backend.modes == ["low", "high"]


async def test_a_batch_too_big_for_one_call_is_split_and_progress_counts_the_whole_job(tmp_path: Path) -> None:
    footprint = reference_footprint(SPEC)
    limit = estimate_peak(footprint, 1024, 1024, 8, "high", 4)
    plan = plan_job(limit, footprint, 1024, 1024, 8)
    assert plan is not None and (plan.mode, plan.batch) == ("high", 4)  # precondition
    backend = Scripted(nothing)
    worker, source, _ = make(tmp_path, backend, vram_limit=limit)
    outcome, _, images = await run(worker, source, job(tmp_path, EIGHT, size=1024))
    assert outcome == "done"
    assert [saved.seed for saved in images] == list(EIGHT)  # type: ignore[attr-defined]
    assert backend.calls == [("high", EIGHT[:4]), ("high", EIGHT[4:])]
    assert backend.modes == []
    assert source.progress == [(step, 2 * STEPS) for step in range(1, 2 * STEPS + 1)]


# -- out of memory ------------------------------------------------------------------------------------


async def test_out_of_memory_after_the_steps_steps_down_one_mode_and_the_counter_goes_on(tmp_path: Path) -> None:
    """An OOM in the decode, after every step was shown: the retry in balanced mode adds its steps to the
    ones shown, it does not start again from 1."""
    backend = Scripted(None)

    def decode_fails_in_high(params: GenerationParams) -> None:
        if backend.memory_mode == "high":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.80 GiB")

    backend.script = decode_fails_in_high
    worker, source, _ = make(tmp_path, backend)
    outcome, _, images = await run(worker, source, job(tmp_path, (5, 6)))
    assert outcome == "done"
    assert [saved.seed for saved in images] == [5, 6]  # type: ignore[attr-defined]
    assert backend.calls == [("high", (5, 6)), ("balanced", (5, 6))]
    assert backend.modes == ["balanced", "high"]  # stepped down once, then back to its own mode
    assert_never_goes_back(source.progress)
    assert source.progress[STEPS - 1] == (STEPS, STEPS)  # the failed call, as reported
    assert source.progress[STEPS:] == [(STEPS + step, 2 * STEPS) for step in range(1, STEPS + 1)]


async def test_each_out_of_memory_steps_down_again_until_one_fits(tmp_path: Path) -> None:
    backend = Scripted(None)

    def fits_only_in_minimal(params: GenerationParams) -> None:
        if backend.memory_mode != "minimal":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    backend.script = fits_only_in_minimal
    worker, source, _ = make(tmp_path, backend)
    outcome, _, _ = await run(worker, source, job(tmp_path, (1,)))
    assert outcome == "done"
    assert [mode for mode, _ in backend.calls] == ["high", "balanced", "low", "minimal"]
    assert backend.modes == ["balanced", "low", "minimal", "high"]
    assert_never_goes_back(source.progress)
    assert source.progress[-1] == (4 * STEPS, 4 * STEPS)


async def test_out_of_memory_in_the_second_call_of_a_split_batch_keeps_the_first_calls_images(
    tmp_path: Path,
) -> None:
    footprint = reference_footprint(SPEC)
    limit = estimate_peak(footprint, 1024, 1024, 8, "high", 4)
    backend = Scripted(None)

    def second_call_fails_once(params: GenerationParams) -> None:
        if params.seeds == EIGHT[4:] and backend.memory_mode == "high":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    backend.script = second_call_fails_once
    worker, source, _ = make(tmp_path, backend, vram_limit=limit)
    outcome, _, images = await run(worker, source, job(tmp_path, EIGHT, size=1024))
    assert outcome == "done"
    assert [saved.seed for saved in images] == list(EIGHT)  # type: ignore[attr-defined]
    assert backend.calls == [("high", EIGHT[:4]), ("high", EIGHT[4:]), ("balanced", EIGHT[4:])]
    assert_never_goes_back(source.progress)


@pytest.mark.parametrize("error", [ValueError("broken"), RuntimeError("CUDA error: an illegal memory access")])
async def test_other_errors_do_not_step_down(tmp_path: Path, error: Exception) -> None:
    def script(params: GenerationParams) -> None:
        raise error

    backend = Scripted(script)
    worker, source, _ = make(tmp_path, backend)
    outcome, _, message = await run(worker, source, job(tmp_path, (1,)))
    assert outcome == "failed"
    assert message == f"Generation failed ({type(error).__name__})."
    assert backend.modes == [] and len(backend.calls) == 1


# -- the real tiny SDXL: an OOM in the VAE decode redoes only the decode --------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SDXLBackend]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    runtime = RuntimeOptions("cpu", None, tmp_path_factory.mktemp("models"), local_files_only=True)
    spec = ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory="high")
    yield load_sdxl(spec, runtime)
    torch.set_num_threads(before)


def decode_fails_while(backend: SDXLBackend, modes: set[str]) -> Callable[[], None]:
    """Make the VAE decode run out of memory while the model is in one of `modes`; returns the undo."""
    vae = backend.pipeline.vae
    decode = vae.decode

    def failing(*args: Any, **kwargs: Any) -> Any:
        if backend.memory_mode in modes:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.80 GiB")
        return decode(*args, **kwargs)

    vae.decode = failing
    return lambda: delattr(vae, "decode")


def unet_calls(backend: SDXLBackend) -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []
    handle = backend.pipeline.unet.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle.remove


async def test_an_oom_in_the_decode_redoes_only_the_decode_one_mode_lower(
    tiny_sdxl: SDXLBackend, tmp_path: Path
) -> None:
    params = GenerationParams("1girl, smile", "lowres", 64, 64, 3, 5.0, (21, 22), "euler_a")
    expected = [np.asarray(image) for image in tiny_sdxl.generate(params)]
    undo = decode_fails_while(tiny_sdxl, {"high"})
    calls, remove = unet_calls(tiny_sdxl)
    modes: list[str] = []
    switch = tiny_sdxl.set_memory_mode

    def recording(mode: MemoryMode) -> None:
        modes.append(mode)
        switch(mode)

    tiny_sdxl.set_memory_mode = recording  # type: ignore[method-assign]
    try:
        worker, source, _ = make(tmp_path, tiny_sdxl)
        item = WorkItem(1, tiny_sdxl.spec, params, (tmp_path / "a.png", tmp_path / "b.png"))
        outcome, _, saved = await run(worker, source, item)
    finally:
        del tiny_sdxl.set_memory_mode
        remove()
        undo()
    assert outcome == "done"
    assert modes == ["balanced", "high"]
    assert len(calls) == 3  # three steps (CFG batched), not six: the steps did not run again
    assert source.progress == [(1, 3), (2, 3), (3, 3)]
    got = [np.asarray(Image.open(image.path).convert("RGB")) for image in saved]  # type: ignore[attr-defined]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


async def test_a_decode_that_fits_in_no_mode_fails_the_job(tiny_sdxl: SDXLBackend, tmp_path: Path) -> None:
    params = GenerationParams("1girl", "", 64, 64, 2, 5.0, (3,), "euler_a")
    undo = decode_fails_while(tiny_sdxl, {"high", "balanced", "low", "minimal"})
    calls, remove = unet_calls(tiny_sdxl)
    try:
        worker, source, _ = make(tmp_path, tiny_sdxl)
        item = WorkItem(1, tiny_sdxl.spec, params, (tmp_path / "a.png",))
        outcome, _, message = await run(worker, source, item)
    finally:
        remove()
        undo()
    assert (outcome, message) == ("failed", "Out of GPU memory, even in the lowest memory mode. Try a smaller size.")
    assert len(calls) == 2 and tiny_sdxl.memory_mode == "high"
