"""The GPU worker: one asyncio task that owns the accelerator and runs jobs one after another.

Inference runs on one dedicated thread (so the event loop never waits on the GPU), PNG encoding and
writing on another, so the GPU thread can start the next job while the last one's images are being
saved. The worker knows nothing of Discord or of the database: a JobSource hands it work and takes
its results (bot.queue implements it).

Failures stay inside their job: an exception, an out-of-memory error (memory is freed and the job is
retried once with half the batch at a time) or NaN output fails that job with a message a user can
read, and the worker goes on with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import numpy as np
from PIL import Image

from inference.backends.base import Backend
from inference.cache import ModelCache
from inference.device import free_device_memory
from inference.png import a1111_parameters, encode_png, write_png
from inference.specs import ModelSpec
from inference.types import (
    CancelToken,
    GenerationCancelled,
    GenerationParams,
    InvalidOutputError,
    JobSource,
    LoadProgress,
    ModelLoadError,
    SavedImage,
    StepProgress,
    WorkItem,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def check_images(images: list[Image.Image]) -> None:
    """Raise InvalidOutputError for the black/NaN frames half-precision overflow produces."""
    for image in images:
        array = np.asarray(image)
        if array.size == 0 or (array.max() == 0 and array.min() == 0):
            raise InvalidOutputError("the model produced a blank image")


class GpuWorker:
    def __init__(self, source: JobSource, cache: ModelCache, save_queue: int = 2) -> None:
        self.source = source
        self.cache = cache
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png")
        self._saves: set[asyncio.Task[None]] = set()
        self._save_slots = asyncio.Semaphore(save_queue)
        self._task: asyncio.Task[None] | None = None
        self._running: tuple[int, CancelToken] | None = None
        self._stopping = False
        self.busy_seconds = 0.0  # seconds the pipeline has been running (benchmarks read it)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gpu-worker")

    async def stop(self) -> None:
        """Stop taking jobs and interrupt the running one between two steps without recording it as
        cancelled: it is still "running" in the store, so the next start queues it again. Pending saves
        are finished."""
        self._stopping = True
        if self._running is not None:
            self._running[1].cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)
        # The GPU thread finishes the step (or the model load, which nothing interrupts) it is in: wait
        # for it off the event loop. The PNG thread is idle, every save having been awaited.
        await asyncio.to_thread(self._gpu.shutdown)
        self._io.shutdown()

    @property
    def running_job(self) -> int | None:
        return None if self._running is None else self._running[0]

    def cancel(self, job_id: int) -> bool:
        """Stop the running job between two steps. False if that job is not running."""
        if self._running is not None and self._running[0] == job_id:
            self._running[1].cancel()
            return True
        return False

    async def idle(self) -> None:
        """Wait until every started save has been recorded."""
        while self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)

    # -- model loading ---------------------------------------------------------------------------

    async def load_model(self, spec: ModelSpec) -> Backend:
        """Load (or fetch from the cache) `spec` on the GPU thread, after the job running now. Raises
        ModelLoadError; the cache then still holds what it held."""
        loop = asyncio.get_running_loop()

        def report(progress: LoadProgress) -> None:
            loop.call_soon_threadsafe(self.source.on_model_loading, spec.name, progress)

        return await self._on_gpu(lambda: self.cache.get(spec, report))

    async def _on_gpu(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._gpu, work)

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            item = await self.source.next_job()
            try:
                await self._run_job(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job stop the worker
                log.exception("job %s: unexpected worker error", item.job_id)
                await self.source.on_failed(item.job_id, "Something went wrong while generating.")

    async def _run_job(self, item: WorkItem) -> None:
        loop = asyncio.get_running_loop()
        token = CancelToken()
        self._running = (item.job_id, token)
        try:
            try:
                backend = await self.load_model(item.spec)
            except ModelLoadError as e:
                await self.source.on_failed(item.job_id, f"The model {item.spec.name} could not be loaded: {e}")
                return

            def report(progress: StepProgress) -> None:
                loop.call_soon_threadsafe(self.source.on_progress, item.job_id, progress)

            try:
                images = await self._on_gpu(lambda: self._generate(backend, item.params, report, token))
            except GenerationCancelled:
                if not self._stopping:  # a shutdown is not the user's cancellation
                    await self.source.on_cancelled(item.job_id)
                return
            except InvalidOutputError as e:
                await self.source.on_failed(
                    item.job_id, f"The model produced an unusable image ({e}). Try another seed or prompt."
                )
                return
            except Exception as e:
                if is_out_of_memory(e):
                    await self.source.on_failed(
                        item.job_id, "Out of GPU memory, even one image at a time. Try a smaller size."
                    )
                else:
                    log.error("job %s failed", item.job_id, exc_info=e)
                    await self.source.on_failed(item.job_id, f"Generation failed ({type(e).__name__}).")
                return
        finally:
            self._running = None
        # Saving overlaps the next job's generation; at most `save_queue` saves wait at once.
        await self._save_slots.acquire()
        task = loop.create_task(self._save(item, images))
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    def _generate(
        self, backend: Backend, params: GenerationParams, report: Callable[[StepProgress], None], token: CancelToken
    ) -> list[Image.Image]:
        """On the GPU thread. Adds the pipeline time to busy_seconds; handles out-of-memory."""
        started = time.perf_counter()
        try:
            images: list[Image.Image] | None = None
            try:
                images = backend.generate(params, report, token)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
            if images is None:
                # Out of memory. Freed and retried outside the except clause: until it ends, the error's
                # traceback keeps the failed call's frames, and so its device tensors, alive.
                log.warning("out of memory with %d image(s); retrying in smaller batches", params.count)
                free_device_memory(self.cache.runtime.device)
                images = self._generate_in_halves(backend, params, report, token)
            check_images(images)
            return images
        finally:
            self.busy_seconds += time.perf_counter() - started

    def _generate_in_halves(
        self, backend: Backend, params: GenerationParams, report: Callable[[StepProgress], None], token: CancelToken
    ) -> list[Image.Image]:
        """The retry after an out-of-memory error: half the batch per call (one image if it was two or
        one). A second out-of-memory error propagates and fails the job."""
        size = max(1, params.count // 2)
        images: list[Image.Image] = []
        for start in range(0, params.count, size):
            part = replace(params, seeds=params.seeds[start : start + size])
            images.extend(backend.generate(part, report, token))
        return images

    async def _save(self, item: WorkItem, images: list[Image.Image]) -> None:
        try:
            loop = asyncio.get_running_loop()
            saved = await loop.run_in_executor(self._io, self._encode_and_write, item, images)
            await self.source.on_done(item.job_id, saved)
        except Exception as e:
            log.error("job %s: saving failed", item.job_id, exc_info=e)
            await self.source.on_failed(item.job_id, "The images could not be saved.")
        finally:
            self._save_slots.release()

    @staticmethod
    def _encode_and_write(item: WorkItem, images: list[Image.Image]) -> list[SavedImage]:
        saved = []
        for index, (image, path) in enumerate(zip(images, item.image_paths, strict=True)):
            parameters = a1111_parameters(item.params, index, item.spec.name)
            write_png(path, encode_png(image, parameters))
            saved.append(SavedImage(index, item.params.seeds[index], path, image.width, image.height, parameters))
        return saved
