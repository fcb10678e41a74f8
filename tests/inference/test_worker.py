"""GpuWorker with scripted backends: the out-of-memory retry, shutting down while the GPU thread is busy, and
a JobSource that fails (locked database, full disk): the worker lives on and every outcome is recorded."""

from __future__ import annotations

import asyncio
import errno
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from inference.backends.base import Backend
from inference.cache import ModelCache
from inference.memory import Footprint, reference_footprint
from inference.png import write_png as real_write_png
from inference.specs import BuiltinSource, MemoryMode, ModelSpec, RuntimeOptions
from inference.types import (
    CancelToken,
    GenerationParams,
    LoadProgress,
    LoadProgressCallback,
    LoraFile,
    ProgressCallback,
    SavedImage,
    SourceBusy,
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
    """A Backend whose generate reports params.steps steps, runs `script(params)` (after the steps, where a
    VAE decode would run) and then returns one red image per seed. Records its mode switches and calls."""

    def __init__(self, script: object) -> None:
        self.spec = SPEC
        self.script = script
        self.memory_mode: MemoryMode = "high"
        self.modes: list[MemoryMode] = []  # every set_memory_mode call
        self.calls: list[tuple[MemoryMode, tuple[int, ...]]] = []  # (mode, seeds) of every generate call

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        self.calls.append((self.memory_mode, params.seeds))
        for step in range(1, params.steps + 1):
            if progress is not None:
                progress(StepProgress(step, params.steps, 0.01 * step))
        self.script(params)  # type: ignore[operator]
        return [Image.new("RGB", (8, 8), (255, 0, 0)) for _ in params.seeds]

    def set_memory_mode(self, mode: MemoryMode) -> None:
        self.modes.append(mode)
        self.memory_mode = mode

    def footprint(self) -> Footprint:
        return reference_footprint(self.spec)

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
    backend = Scripted(None)

    def script(params: GenerationParams) -> None:
        if backend.memory_mode == "high":
            activations = torch.empty(1024)
            failed_attempt.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        alive_during_retry.append(failed_attempt[0]() is not None)

    backend.script = script
    worker, source = make_worker(tmp_path, backend)
    worker.start()
    try:
        await source.items.put(item(tmp_path, 1, (10, 11)))
        outcome, job_id, images = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id) == ("done", 1)
    assert [saved.seed for saved in images] == [10, 11]  # type: ignore[attr-defined]
    assert alive_during_retry == [False]  # the retry: one call of both seeds, one mode lower
    assert backend.calls == [("high", (10, 11)), ("balanced", (10, 11))]


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
async def test_out_of_memory_in_every_mode_fails_the_job(tmp_path: Path, seeds: tuple[int, ...]) -> None:
    def script(params: GenerationParams) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    backend = Scripted(script)
    worker, source = make_worker(tmp_path, backend)
    worker.start()
    try:
        await source.items.put(item(tmp_path, 7, seeds))
        outcome, job_id, message = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id) == ("failed", 7)
    assert message == "Out of GPU memory, even in the lowest memory mode. Try a smaller size."
    assert [mode for mode, _ in backend.calls] == ["high", "balanced", "low", "minimal"]
    assert backend.modes == ["balanced", "low", "minimal", "high"]  # stepped down, then its own mode again


# -- the JobSource failing: the worker survives, outcomes are recorded once the store is back ---------


class FlakySource(Source):
    """A Source whose methods raise the scripted errors first (one per call), then work."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, list[Exception]] = {"next_job": [], "on_done": [], "on_failed": []}
        self.calls: dict[str, int] = {"next_job": 0, "on_done": 0, "on_failed": 0}

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] += 1
        if self.errors[method]:
            raise self.errors[method].pop(0)

    async def next_job(self) -> WorkItem:
        got = await self.items.get()
        self._maybe_fail("next_job")
        return got

    async def on_done(self, job_id: int, images: list[SavedImage]) -> None:
        self._maybe_fail("on_done")
        await super().on_done(job_id, images)

    async def on_failed(self, job_id: int, message: str) -> None:
        self._maybe_fail("on_failed")
        await super().on_failed(job_id, message)


def flaky_worker(tmp_path: Path, backend: Scripted) -> tuple[GpuWorker, FlakySource]:
    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        return backend

    source = FlakySource()
    cache = ModelCache(RuntimeOptions(device="cpu", dtype=None, cache_dir=tmp_path), loader=loader)
    return GpuWorker(source, cache, retry=(0.01, 0.05)), source


def nothing(params: GenerationParams) -> None:
    pass


async def test_a_failed_claim_does_not_stop_the_worker(tmp_path: Path) -> None:
    worker, source = flaky_worker(tmp_path, Scripted(nothing))
    source.errors["next_job"] = [SourceBusy("database is locked"), RuntimeError("disk I/O error")]
    worker.start()
    try:
        for job_id in (1, 2, 3):  # the first two claims fail (their items are lost to the fake: no matter)
            await source.items.put(item(tmp_path, job_id, (job_id,)))
        outcome, job_id, _ = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id) == ("done", 3)
    assert source.calls["next_job"] >= 3


async def test_an_outcome_that_cannot_be_recorded_yet_is_retried_until_it_is(tmp_path: Path) -> None:
    """A locked database when the images are ready: the job ends done with them, not failed."""
    worker, source = flaky_worker(tmp_path, Scripted(nothing))
    source.errors["on_done"] = [SourceBusy("database is locked")] * 4
    worker.start()
    try:
        await source.items.put(item(tmp_path, 1, (1, 2)))
        outcome, job_id, images = await asyncio.wait_for(source.finished.get(), 30)
        await source.items.put(item(tmp_path, 2, (3,)))  # and the worker goes on
        second = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id) == ("done", 1)
    assert [saved.path.is_file() for saved in images] == [True, True]  # type: ignore[attr-defined]
    assert source.calls["on_done"] == 6 and source.calls["on_failed"] == 0
    assert second[:2] == ("done", 2)


async def test_a_failure_that_cannot_be_recorded_yet_is_retried_and_the_worker_goes_on(tmp_path: Path) -> None:
    def boom(params: GenerationParams) -> None:
        if params.seeds == (1,):
            raise ValueError("broken")

    worker, source = flaky_worker(tmp_path, Scripted(boom))
    source.errors["on_failed"] = [SourceBusy("database or disk is full"), RuntimeError("disk I/O error")]
    worker.start()
    try:
        await source.items.put(item(tmp_path, 1, (1,)))
        await source.items.put(item(tmp_path, 2, (2,)))
        first = await asyncio.wait_for(source.finished.get(), 30)
        second = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert first == ("failed", 1, "Generation failed (ValueError).")
    assert second[:2] == ("done", 2)


async def test_done_refused_for_good_fails_the_job_instead_of_leaving_it_running(tmp_path: Path) -> None:
    worker, source = flaky_worker(tmp_path, Scripted(nothing))
    source.errors["on_done"] = [RuntimeError("a bug in the store")] * 50
    worker.start()
    try:
        await source.items.put(item(tmp_path, 1, (1,)))
        outcome, job_id, message = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id, message) == ("failed", 1, "The images were made but could not be recorded.")


async def test_stop_does_not_wait_for_a_store_that_stays_locked(tmp_path: Path) -> None:
    worker, source = flaky_worker(tmp_path, Scripted(nothing))
    worker.retry = (3600.0, 3600.0)  # a pause stop() must cut short
    source.errors["on_done"] = [SourceBusy("database is locked")] * 1000
    worker.start()
    await source.items.put(item(tmp_path, 1, (1,)))
    while source.calls["on_done"] == 0:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(worker.stop(), 30)
    assert source.finished.empty()  # left running: the next start queues it again


def failing_write(fail_at: int, error: OSError) -> object:
    """A write_png that writes `fail_at` files, then writes part of the next and raises `error`."""
    calls = [0]

    def write(path: Path, data: bytes) -> None:
        calls[0] += 1
        if calls[0] <= fail_at:
            real_write_png(path, data)
            return
        part = path.with_name(path.name + ".part")
        part.write_bytes(data[: len(data) // 2])
        try:
            raise error
        finally:
            part.unlink()  # what write_png does on failure (tested in test_png_write_cleans_up_on_failure)

    return write


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "The images could not be saved: the disk is full."),
        (
            OSError(errno.EROFS, "Read-only file system"),
            "The images could not be saved: the images folder cannot be written to.",
        ),
        (OSError(errno.EIO, "Input/output error"), "The images could not be saved (Input/output error)."),
    ],
)
async def test_a_failed_write_fails_the_job_with_a_clear_reason_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str
) -> None:
    monkeypatch.setattr("inference.worker.write_png", failing_write(1, error))
    worker, source = flaky_worker(tmp_path, Scripted(nothing))
    worker.start()
    try:
        await source.items.put(item(tmp_path, 1, (1, 2, 3)))
        outcome, job_id, message = await asyncio.wait_for(source.finished.get(), 30)
        await source.items.put(item(tmp_path, 2, (4,)))  # the worker lives on
        second = await asyncio.wait_for(source.finished.get(), 30)
    finally:
        await worker.stop()
    assert (outcome, job_id, message) == ("failed", 1, reason)
    assert second[:2] == ("failed", 2)  # the fake disk is still full
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".png", ".part")) == []


def test_png_write_cleans_up_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space"):
        real_write_png(tmp_path / "a.png", b"x" * 100)
    assert list(tmp_path.iterdir()) == []


class LockedSource(Source):
    """A Source whose store stays locked: every claim fails at once."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self.claimed = asyncio.Event()

    async def next_job(self) -> WorkItem:
        self.claims += 1
        self.claimed.set()
        raise SourceBusy("database is locked")


async def test_stop_during_a_retry_pause_ends_the_loop(tmp_path: Path) -> None:
    """stop() sets the stop event and cancels the loop in the same breath: on Python 3.11, wait_for in the retry
    pause returns normally then and swallows the cancellation; the loop must still end, not claim forever."""
    source = LockedSource()
    cache = ModelCache(RuntimeOptions(device="cpu", dtype=None, cache_dir=tmp_path))
    worker = GpuWorker(source, cache, retry=(30.0, 30.0))
    worker.start()
    await asyncio.wait_for(source.claimed.wait(), 30)
    await asyncio.sleep(0.05)  # in its 30 s pause now
    await asyncio.wait_for(worker.stop(), 30)
    claims = source.claims
    await asyncio.sleep(0.1)
    assert claims == source.claims == 1
