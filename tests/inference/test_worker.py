"""GpuWorker with scripted backends: the out-of-memory retry and shutting down while the GPU thread is busy."""

from __future__ import annotations

import asyncio
import threading
import weakref
from pathlib import Path

import pytest
import torch
from PIL import Image

from inference.backends.base import Backend
from inference.cache import ModelCache
from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
from inference.types import (
    CancelToken,
    GenerationParams,
    LoadProgress,
    LoadProgressCallback,
    ProgressCallback,
    SavedImage,
    StepProgress,
    WorkItem,
)
from inference.worker import GpuWorker

SPEC = ModelSpec(name="scripted", family="sdxl", dialect="animagine-xl-4", source=BuiltinSource("tiny-sdxl"))


class Source:
    """A JobSource that hands out queued items and records what happened to them."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[WorkItem] = asyncio.Queue()
        self.finished: asyncio.Queue[tuple[str, int, object]] = asyncio.Queue()

    async def next_job(self) -> WorkItem:
        return await self.items.get()

    def on_progress(self, job_id: int, progress: StepProgress) -> None:
        pass

    def on_model_loading(self, model: str, progress: LoadProgress) -> None:
        pass

    async def on_done(self, job_id: int, images: list[SavedImage]) -> None:
        await self.finished.put(("done", job_id, images))

    async def on_failed(self, job_id: int, message: str) -> None:
        await self.finished.put(("failed", job_id, message))

    async def on_cancelled(self, job_id: int) -> None:
        await self.finished.put(("cancelled", job_id, None))


class Scripted:
    """A Backend whose generate runs `script(params)` and then returns one red image per seed."""

    def __init__(self, script: object) -> None:
        self.spec = SPEC
        self.script = script

    def generate(
        self, params: GenerationParams, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
    ) -> list[Image.Image]:
        self.script(params)  # type: ignore[operator]
        return [Image.new("RGB", (8, 8), (255, 0, 0)) for _ in params.seeds]

    def offload(self) -> None: ...

    def activate(self) -> None: ...

    def unload(self) -> None: ...


def make_worker(tmp_path: Path, backend: Scripted) -> tuple[GpuWorker, Source]:
    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        return backend

    runtime = RuntimeOptions(device="cpu", dtype=None, cache_dir=tmp_path)
    source = Source()
    return GpuWorker(source, ModelCache(runtime, loader=loader)), source


def item(tmp_path: Path, job_id: int, seeds: tuple[int, ...]) -> WorkItem:
    params = GenerationParams("1girl", "", 8, 8, 1, 5.0, seeds, "euler_a")
    return WorkItem(job_id, SPEC, params, tuple(tmp_path / f"{job_id}-{i}.png" for i in range(len(seeds))))


async def test_out_of_memory_retry_runs_after_the_failed_call_is_released(tmp_path: Path) -> None:
    """The failed attempt's tensors (frame locals kept alive by the error's traceback) are gone before the
    smaller batches run, so the retry has that memory back."""
    failed_attempt: list[weakref.ref[torch.Tensor]] = []
    alive_during_retry: list[bool] = []

    def script(params: GenerationParams) -> None:
        if params.count > 1:
            activations = torch.empty(1024)
            failed_attempt.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        alive_during_retry.append(failed_attempt[0]() is not None)

    worker, source = make_worker(tmp_path, Scripted(script))
    worker.start()
    try:
        await source.items.put(item(tmp_path, 1, (10, 11)))
        outcome, job_id, images = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id) == ("done", 1)
    assert [saved.seed for saved in images] == [10, 11]  # type: ignore[attr-defined]
    assert alive_during_retry == [False, False]


async def test_stop_waits_for_the_gpu_thread_without_blocking_the_loop(tmp_path: Path) -> None:
    """A call that no CancelToken interrupts (a model load, a long step) keeps the GPU thread busy after
    stop(): the event loop must go on meanwhile."""
    entered = threading.Event()
    release = threading.Event()

    def script(params: GenerationParams) -> None:
        entered.set()
        release.wait(timeout=5)

    worker, source = make_worker(tmp_path, Scripted(script))
    worker.start()
    await source.items.put(item(tmp_path, 1, (1,)))
    assert await asyncio.to_thread(entered.wait, 10)
    safety = threading.Timer(2.0, release.set)  # without the fix the loop is blocked until this fires
    safety.start()
    try:
        stopping = asyncio.create_task(worker.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # still waiting for the GPU thread, and the loop ran this test meanwhile
        release.set()
        await asyncio.wait_for(stopping, 10)
    finally:
        release.set()
        safety.cancel()


@pytest.mark.parametrize("seeds", [(1,), (1, 2, 3)])
async def test_out_of_memory_twice_fails_the_job(tmp_path: Path, seeds: tuple[int, ...]) -> None:
    def script(params: GenerationParams) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    worker, source = make_worker(tmp_path, Scripted(script))
    worker.start()
    try:
        await source.items.put(item(tmp_path, 7, seeds))
        outcome, job_id, message = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id) == ("failed", 7)
    assert "Out of GPU memory" in str(message)
