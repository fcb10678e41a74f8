"""The GPU worker: one asyncio task that owns the accelerator and runs jobs one after another.

Inference runs on one dedicated thread (so the event loop never waits on the GPU), PNG encoding and
writing on another, so the GPU thread can start the next job while the last one's images are being
saved. The worker knows nothing of Discord or of the database: a JobSource hands it work and takes
its results (bot.queue implements it).

Memory (inference.memory): before a job runs, its peak is estimated for this device. A job that cannot fit in
any memory mode fails at once with the estimate in its message; one that fits only in a lower mode or with
fewer images per pipeline call runs that way (SDXL: its seeds are split into calls of plan.batch), and the
model goes back to its own mode afterwards. An out-of-memory error the estimate did not foresee frees memory,
steps the model down one mode and retries the call that failed, down to minimal; only then does the job fail.
The step counter users see never goes back: a retried call's steps are added to the ones already shown. When
the error hit the VAE decode after every step (DecodeOutOfMemory: SDXL keeps the final latents), only the
decode is done again, one mode lower.

Failures stay inside their job: an exception, an out-of-memory error in every mode or NaN output fails that
job with a message a user can read, and the worker goes on with the next one.

Failures of the JobSource (its database locked by another process, a full disk) never stop the worker:
a failed claim is tried again after a pause, and an outcome that could not be recorded is recorded
again, with pauses growing up to RETRY_MAX, until it is. Saving the images and recording them are two
steps: only a failed save fails the job ("the disk is full"); a failed record is retried, so a job
whose images were written ends done with them once the database can be written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from inference.backends.base import Backend
from inference.cache import ModelCache
from inference.device import DecodeOutOfMemory, device_budget, free_device_memory, is_out_of_memory
from inference.loras import LoraLoadError
from inference.memory import JobPlan, estimate_peak, gib, plan_job, resolve_mode, step_down
from inference.png import a1111_parameters, encode_png, write_png
from inference.specs import MemoryMode, ModelSpec
from inference.types import (
    CancelToken,
    GenerationCancelled,
    GenerationParams,
    InvalidOutputError,
    JobSource,
    LoadProgress,
    LoraFile,
    ModelLoadError,
    ProgressCallback,
    SavedImage,
    SourceBusy,
    StepProgress,
    WorkItem,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_FIRST = 0.5  # seconds before the first retry of a failed claim or record; doubled each time
RETRY_MAX = 30.0  # the longest pause between two retries
DONE_ATTEMPTS = 5  # records of "done" that fail with a lasting (not SourceBusy) error before the job is failed


def save_failure(error: BaseException) -> str:
    """The job's error when its images could not be written."""
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return "The images could not be saved: the disk is full."
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "The images could not be saved: the images folder cannot be written to."
        return f"The images could not be saved ({error.strerror or type(error).__name__})."
    return "The images could not be saved."


LoraLookup = Callable[[str], Path | None]  # a LoRA file's SHA-256 -> its path on this host, or None


@dataclass(frozen=True)
class JobInputs:
    """What a job hands its backend besides the params: the decoded source image and the LoRA files."""

    source: Image.Image | None = None
    loras: tuple[LoraFile, ...] = ()


class JobInputError(Exception):
    """A job's source image or LoRA is not usable on this worker (the message is the job's error)."""


def decode_source(data: bytes) -> Image.Image:
    """A job's source PNG (or any image Pillow reads) as an RGB image, fully loaded. Transparency is flattened
    onto white, as WebUI's img2img does (its default background): dropping the alpha channel would bring back
    whatever colour the transparent pixels happen to hold. CPU work: off the loop."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


class JobTooLarge(Exception):
    """The job cannot fit in the device's memory in any mode (the message says how much it needs)."""


class OutOfMemoryInEveryMode(Exception):
    """Out of memory even in minimal mode."""


OUT_OF_MEMORY = "Out of GPU memory, even in the lowest memory mode. Try a smaller size."


class JobProgress:
    """The step counter of one job across its pipeline calls: calls of part of the seeds (a split batch) and
    calls retried after an out-of-memory error. A call reports its own steps from 1; the job's counter adds the
    steps of the calls before it (a failed call's steps stay counted, and its retry adds its own), so the
    counter a user sees never goes back. The total is the steps done so far plus what the calls left need."""

    def __init__(self, report: ProgressCallback) -> None:
        self.report = report
        self.done = 0  # steps reported by finished and failed calls
        self.step = 0  # the running call's last step and total
        self.total = 0
        self.started: float | None = None

    def call(self, images_left: int, images_in_call: int) -> ProgressCallback:
        """The callback for the next call, which makes `images_in_call` of the `images_left` images."""
        self.step = self.total = 0
        calls_left = -(-images_left // images_in_call)

        def on_step(progress: StepProgress) -> None:
            now = time.perf_counter()
            if self.started is None:
                self.started = now - progress.elapsed
            self.step, self.total = progress.step, progress.total
            job_total = self.done + progress.total * calls_left
            self.report(StepProgress(self.done + progress.step, job_total, now - self.started))

        return on_step

    def finished(self) -> None:
        self.done += self.total or self.step

    def failed(self) -> None:
        self.done += self.step


def check_images(images: list[Image.Image]) -> None:
    """Raise InvalidOutputError for the black/NaN frames half-precision overflow produces."""
    for image in images:
        array = np.asarray(image)
        if array.size == 0 or (array.max() == 0 and array.min() == 0):
            raise InvalidOutputError("the model produced a blank image")


class GpuWorker:
    def __init__(
        self,
        source: JobSource,
        cache: ModelCache,
        save_queue: int = 2,
        retry: tuple[float, float] = (RETRY_FIRST, RETRY_MAX),
        loras: LoraLookup | None = None,
    ) -> None:
        self.source = source
        self.cache = cache
        self.loras = loras  # finds this host's copy of a job's LoRA by its SHA-256 (None: no LoRA library)
        self.retry = retry  # (first pause, longest pause) between retries of the JobSource
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png")
        self._saves: set[asyncio.Task[None]] = set()
        self._save_slots = asyncio.Semaphore(save_queue)
        self._task: asyncio.Task[None] | None = None
        self._running: tuple[int, CancelToken] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()  # wakes retry pauses at stop()
        self.busy_seconds = 0.0  # seconds the pipeline has been running (benchmarks read it)
        # Called on the GPU thread with the model's name after a load (not a cache hit) finished: the bot's
        # garbage-collector policy (bot/core/collector.py) freezes the objects the load left.
        self.on_model_loaded: Callable[[str], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gpu-worker")

    async def stop(self) -> None:
        """Stop taking jobs and interrupt the running one between two steps without recording it as
        cancelled: it is still "running" in the store, so the next start queues it again. Pending saves
        are finished; an outcome still being retried is tried at most once more (if that fails too, the
        job stays running in the store, and the next start queues it again)."""
        self._stopping = True
        self._stopped.set()
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

        def load() -> Backend:
            fresh = self.cache.loaded(spec) is None
            backend = self.cache.get(spec, report)
            if fresh and self.on_model_loaded is not None:
                try:
                    self.on_model_loaded(spec.name)
                except Exception:  # the model is loaded and usable all the same
                    log.exception("model %s: the after-load callback failed", spec.name)
            return backend

        return await self._on_gpu(load)

    def plan(self, spec: ModelSpec, width: int, height: int, count: int) -> JobPlan | None:
        """How a job of `count` width x height images of `spec` would run on this device (memory mode,
        images per call), or None when it cannot run in any mode. Cheap: no model is loaded."""
        budget = device_budget(self.cache.runtime)
        footprint = self.cache.footprint(spec)
        backend = self.cache.loaded(spec)
        start = backend.memory_mode if backend is not None else resolve_mode(spec.memory, budget, footprint)
        return plan_job(budget, footprint, width, height, count, start)

    def refusal(self, spec: ModelSpec, width: int, height: int, count: int) -> str:
        """Why a job plan() refused cannot run: the least it needs (minimal mode, one image per call) and what
        the device has."""
        budget = device_budget(self.cache.runtime) or 0
        need = estimate_peak(self.cache.footprint(spec), width, height, count, "minimal", 1)
        return f"This needs about {gib(need)} of GPU memory and {gib(budget)} is usable. Try a smaller size."

    def _require_plan(self, spec: ModelSpec, params: GenerationParams) -> JobPlan:
        """Planned at the size the job's images come out at (the hires fix's refine is its largest pass)."""
        width, height = params.output_size()
        plan = self.plan(spec, width, height, params.count)
        if plan is None:
            raise JobTooLarge(self.refusal(spec, width, height, params.count))
        return plan

    async def _on_gpu(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._gpu, work)

    # -- the loop --------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        # Checked as well as cancelled: on Python 3.11, asyncio.wait_for can swallow the cancellation stop() sends
        # while a retry pause ends at the same moment (_stopped is set first), and the loop must not go on.
        while not self._stopping:
            try:
                item = await self.source.next_job()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is locked or broken: never let it stop the worker
                failures += 1
                self._log_source_error("claiming the next job", failures, e)
                await self._pause(failures)
                continue
            failures = 0
            try:
                await self._run_job(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job stop the worker
                log.exception("job %s: unexpected worker error", item.job_id)
                await self._failed(item.job_id, "Something went wrong while generating.")

    # -- recording outcomes ----------------------------------------------------------------------

    def _delay(self, failures: int) -> float:
        first, longest = self.retry
        return float(min(longest, first * 2 ** min(failures - 1, 30)))

    async def _pause(self, failures: int) -> None:
        """Wait before retry number `failures`; returns early when the worker stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self._delay(failures))

    @staticmethod
    def _log_source_error(what: str, failures: int, error: Exception) -> None:
        if isinstance(error, SourceBusy):  # expected while another program holds the database
            log.warning("%s failed (%s); trying again (%d)", what, error, failures)
        elif failures == 1:
            log.error("%s failed; trying again", what, exc_info=error)
        else:
            log.error("%s failed again (%s: %s); trying again (%d)", what, type(error).__name__, error, failures)

    async def _record(self, job_id: int, what: str, record: Callable[[], Awaitable[None]]) -> bool:
        """Call `record` until it succeeds. False if the worker stopped first, or, recording "done" with a
        lasting error (not SourceBusy), after DONE_ATTEMPTS failures (the caller then fails the job)."""
        failures = 0
        while True:
            try:
                await record()
                return True
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                self._log_source_error(f"job {job_id}: recording it {what}", failures, e)
                if self._stopping:
                    log.warning("job %s: left running; the next start queues it again", job_id)
                    return False
                if what == "done" and not isinstance(e, SourceBusy) and failures >= DONE_ATTEMPTS:
                    return False
                await self._pause(failures)

    async def _failed(self, job_id: int, message: str) -> None:
        await self._record(job_id, "failed", lambda: self.source.on_failed(job_id, message))

    async def _cancelled(self, job_id: int) -> None:
        await self._record(job_id, "cancelled", lambda: self.source.on_cancelled(job_id))

    async def _done(self, job_id: int, saved: list[SavedImage]) -> None:
        if not await self._record(job_id, "done", lambda: self.source.on_done(job_id, saved)) and not self._stopping:
            # The store refuses these images for good (a bug, not a busy database): fail the job
            # rather than leave it running.
            await self._failed(job_id, "The images were made but could not be recorded.")

    async def _run_job(self, item: WorkItem) -> None:
        loop = asyncio.get_running_loop()
        token = CancelToken()
        self._running = (item.job_id, token)
        try:
            try:  # before the model loads: a job that cannot fit anyway fails now
                await self._on_gpu(lambda: self._require_plan(item.spec, item.params))
                backend = await self.load_model(item.spec)
            except JobTooLarge as e:
                log.warning("job %s refused: %s", item.job_id, e)
                await self._failed(item.job_id, str(e))
                return
            except ModelLoadError as e:
                await self._failed(item.job_id, f"The model {item.spec.name} could not be loaded: {e}")
                return
            try:
                inputs = await self._on_gpu(lambda: self._inputs(item))
            except JobInputError as e:
                log.warning("job %s refused: %s", item.job_id, e)
                await self._failed(item.job_id, str(e))
                return

            def report(progress: StepProgress) -> None:
                loop.call_soon_threadsafe(self.source.on_progress, item.job_id, progress)

            try:
                images = await self._on_gpu(lambda: self._generate(backend, item.params, report, token, inputs))
            except JobTooLarge as e:
                log.warning("job %s refused: %s", item.job_id, e)
                await self._failed(item.job_id, str(e))
                return
            except OutOfMemoryInEveryMode:
                await self._failed(item.job_id, OUT_OF_MEMORY)
                return
            except GenerationCancelled:
                if not self._stopping:  # a shutdown is not the user's cancellation
                    await self._cancelled(item.job_id)
                return
            except InvalidOutputError as e:
                message = f"The model produced an unusable image ({e}). Try another seed or prompt."
                await self._failed(item.job_id, message)
                return
            except LoraLoadError as e:  # a LoRA file this model cannot use: the message says which and why
                log.warning("job %s: %s", item.job_id, e)
                await self._failed(item.job_id, str(e))
                return
            except Exception as e:
                if is_out_of_memory(e):  # while switching modes
                    await self._failed(item.job_id, OUT_OF_MEMORY)
                else:
                    log.error("job %s failed", item.job_id, exc_info=e)
                    await self._failed(item.job_id, f"Generation failed ({type(e).__name__}).")
                return
        finally:
            self._running = None
        # Saving overlaps the next job's generation; at most `save_queue` saves wait at once.
        await self._save_slots.acquire()
        task = loop.create_task(self._save(item, images))
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    def _inputs(self, item: WorkItem) -> JobInputs:
        """On the GPU thread: the job's source image decoded (RGB) and its LoRAs found in this host's library.
        JobInputError when one is missing or unreadable (the job fails with that message)."""
        params = item.params
        loras: list[LoraFile] = []
        for lora in params.loras:
            path = self.loras(lora.sha256) if self.loras is not None else None
            if path is None:
                raise JobInputError(f"LoRA {lora.name} is not on this worker")
            loras.append(LoraFile(lora.name, path, lora.sha256, lora.weight))
        if params.source is None:
            return JobInputs(None, tuple(loras))
        if item.source_png is None:
            raise JobInputError("The source image of this job is missing.")
        try:
            source = decode_source(item.source_png)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            log.warning("job %s: the source image cannot be read: %s", item.job_id, e)
            raise JobInputError("The source image of this job cannot be read.") from e
        return JobInputs(source, tuple(loras))

    def _generate(
        self,
        backend: Backend,
        params: GenerationParams,
        report: Callable[[StepProgress], None],
        token: CancelToken,
        inputs: JobInputs | None = None,
    ) -> list[Image.Image]:
        """On the GPU thread: plan the job with the loaded model's measured footprint, switch to the plan's
        mode, run its calls (stepping down a mode at each out-of-memory error), and put the model's own mode
        back. Adds the pipeline time to busy_seconds."""
        started = time.perf_counter()
        own = backend.memory_mode
        job = self.running_job
        try:
            plan = self._require_plan(backend.spec, params)
            if plan.mode != own or plan.batch < params.count:
                log.info(
                    "job %s: memory mode %s, %d image(s) per call (the model's mode: %s; estimated peak %s)",
                    job, plan.mode, plan.batch, own, gib(plan.peak),
                )
            if plan.mode != own:
                backend.set_memory_mode(plan.mode)
            per_call = plan.batch if self.cache.footprint(backend.spec).batches else params.count
            images = self._run_calls(backend, params, per_call, JobProgress(report), token, inputs or JobInputs())
            check_images(images)
            return images
        finally:
            if backend.memory_mode != own:
                self._restore_mode(backend, own)
            self.busy_seconds += time.perf_counter() - started

    def _run_calls(
        self,
        backend: Backend,
        params: GenerationParams,
        per_call: int,
        progress: JobProgress,
        token: CancelToken,
        inputs: JobInputs,
    ) -> list[Image.Image]:
        """The job's seeds in calls of `per_call`. An out-of-memory error frees memory, steps the model down
        one mode and retries that call; out of modes, OutOfMemoryInEveryMode."""
        images: list[Image.Image] = []
        while len(images) < params.count:
            seeds = params.seeds[len(images) : len(images) + per_call]
            made: list[Image.Image] | None = None
            resume: Callable[[], list[Image.Image]] | None = None
            try:
                callback = progress.call(params.count - len(images), len(seeds))
                made = backend.generate(
                    replace(params, seeds=seeds), callback, token, source=inputs.source, loras=inputs.loras
                )
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                if isinstance(e, DecodeOutOfMemory):
                    resume = e.resume
            while made is None and resume is not None:
                # Every step was done; only the VAE decode ran out of memory: decode the kept latents one mode
                # lower (and lower again while it does not fit), without running the steps again. A hires job's
                # resume also runs the refine pass: when that pass's decode runs out of memory in turn, its own
                # resume (the refined latents) replaces this one.
                self._step_down(backend)
                try:
                    made = resume()
                except Exception as e:
                    if not is_out_of_memory(e):
                        raise
                    if isinstance(e, DecodeOutOfMemory):
                        resume = e.resume
            if made is None:
                # Freed and stepped down outside the except clause: until it ends, the error's traceback keeps
                # the failed call's frames, and so its device tensors, alive.
                progress.failed()
                self._step_down(backend)
                continue
            progress.finished()
            images.extend(made)
        return images

    def _step_down(self, backend: Backend) -> None:
        free_device_memory(self.cache.runtime.device)
        mode = backend.memory_mode
        lower = step_down(mode)
        if lower is None:
            log.warning("job %s: out of memory in memory mode %s, the lowest", self.running_job, mode)
            raise OutOfMemoryInEveryMode()
        log.warning("job %s: out of memory in memory mode %s; retrying in %s", self.running_job, mode, lower)
        backend.set_memory_mode(lower)
        free_device_memory(self.cache.runtime.device)

    def _restore_mode(self, backend: Backend, mode: MemoryMode) -> None:
        """Put the model's own mode back after a job that ran in another (the next job plans from it). If that
        fails (out of memory moving the weights back), the model goes on in the mode the job ran in."""
        current = backend.memory_mode
        try:
            backend.set_memory_mode(mode)
        except Exception as e:
            log.error(
                "model %s: could not go back to memory mode %s (%s); it stays in %s",
                backend.spec.name, mode, type(e).__name__, current,
            )
            free_device_memory(self.cache.runtime.device)
            try:
                backend.set_memory_mode(current)
            except Exception:
                log.exception("model %s: could not switch memory modes", backend.spec.name)

    async def _save(self, item: WorkItem, images: list[Image.Image]) -> None:
        """Write the images, then record the outcome. Only a failed write fails the job; a failed record
        is retried (the images are on disk)."""
        try:
            loop = asyncio.get_running_loop()
            try:
                saved = await loop.run_in_executor(self._io, self._encode_and_write, item, images)
            except Exception as e:
                if isinstance(e, OSError):  # a full disk, a read-only folder: the reason says it all
                    log.error("job %s: saving failed: %s", item.job_id, e)
                else:
                    log.error("job %s: saving failed", item.job_id, exc_info=e)
                await self._failed(item.job_id, save_failure(e))
                return
            await self._done(item.job_id, saved)
        finally:
            self._save_slots.release()

    @staticmethod
    def _encode_and_write(item: WorkItem, images: list[Image.Image]) -> list[SavedImage]:
        """On the PNG thread. All or nothing: if one image cannot be written, the ones written before it
        are removed too (the job fails, and a full disk gets its space back)."""
        saved: list[SavedImage] = []
        try:
            for index, (image, path) in enumerate(zip(images, item.image_paths, strict=True)):
                parameters = a1111_parameters(item.params, index, item.spec.name)
                write_png(path, encode_png(image, parameters))
                saved.append(SavedImage(index, item.params.seeds[index], path, image.width, image.height, parameters))
        except BaseException:
            for written in saved:
                with contextlib.suppress(OSError):
                    written.path.unlink()
            raise
        return saved
