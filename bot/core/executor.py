"""Who runs the queued jobs, as the service sees it: the `Executor` protocol, and `LocalExecutor`, the one
in-process GPU worker of `[workers] mode = "local"` (the default). In `mode = "redis"` the executor is the pool
dispatcher (bot/core/pool/dispatcher.py), which hands jobs to `animebot worker` processes through Redis.

The service never touches a GpuWorker or a ModelCache itself: it submits to the SQLite queue, then asks its
executor to cancel, to switch models, whether a job could fit (`plan`), what runs where (`status`), and to
finish what it started (`busy`, `idle`). torch is imported only by LocalExecutor.start(), on a thread."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bot.core.memory_info import MemoryStatus, memory_status
from bot.core.pool.status import ExecutorStatus, WorkerStatus  # the status types, shared with the pool
from inference.memory import Footprint, JobPlan
from inference.specs import ModelSpec
from inference.types import JobSource

if TYPE_CHECKING:
    from bot.config import Config
    from inference.cache import ModelCache
    from inference.worker import GpuWorker


def waiting_for_worker(status: ExecutorStatus) -> bool:
    """Jobs queued now wait until a worker connects: Redis is down, or no worker is online."""
    return not status.online or not status.workers


def holding(status: ExecutorStatus, model: str) -> tuple[WorkerStatus, ...]:
    """The workers that hold `model` now."""
    return tuple(w for w in status.workers if model in w.loaded)


def serving(status: ExecutorStatus, model: str) -> tuple[WorkerStatus, ...]:
    """The workers that can run `model` (they load it when a job asks)."""
    return tuple(w for w in status.workers if model in w.models)


class Executor(Protocol):
    async def start(self) -> None:
        """After the queue started (in local mode JobQueue.start requeued the leftovers of a dead process)."""
        ...

    async def stop(self) -> None: ...

    async def cancel(self, job_id: int) -> None:
        """Stop a running job between steps (the queue recorded that its cancel was asked)."""
        ...

    def busy(self) -> bool:
        """Something runs, or a result is being recorded (drain waits for it)."""
        ...

    async def idle(self) -> None:
        """Wait until every started result is recorded."""
        ...

    def plan(self, spec: ModelSpec, width: int, height: int, count: int) -> JobPlan | None:
        """How the job would run; None when no worker could ever run it (the pre-flight refusal)."""
        ...

    def refusal(self, spec: ModelSpec, width: int, height: int, count: int) -> str: ...

    def memory_status(self, spec: ModelSpec) -> MemoryStatus: ...

    async def switch_model(self, spec: ModelSpec) -> None:
        """Local: load it (after the running job). Redis: nothing when a worker holds it. Raises ModelLoadError."""
        ...

    def status(self) -> ExecutorStatus:
        """Cheap, no I/O (redis: from the last registry read)."""
        ...


def local_worker_id() -> str:
    """The in-process worker's id in /queue and the metrics: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _load_inference() -> None:
    """Import the GPU side (torch, diffusers: seconds) and quiet its libraries' output; on a thread."""
    import inference.worker  # noqa: F401  (cached in sys.modules for the imports that follow)
    from inference.quiet import silence_library_output

    silence_library_output()


def _loaded(cache: ModelCache) -> tuple[str, ...]:
    """The cached model names, read from the event loop while the GPU thread may be loading one."""
    for _ in range(3):
        try:
            return tuple(cache.names())
        except RuntimeError:  # the cache changed while it was read: read again
            continue
    return ()


class LocalExecutor:
    """Today's single-process mode: one GpuWorker in this process, pulling jobs from the SQLite queue (its
    JobSource), and the ModelCache it loads models into."""

    def __init__(
        self,
        config: Config,
        source: JobSource,
        cache: ModelCache | None = None,
        worker_class: type[GpuWorker] | None = None,
        loras: Callable[[str], Path | None] | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._loras = loras  # a job's LoRA file by its SHA-256 (the service's library)
        self._cache = cache  # None: built at start from [inference]
        self._worker_class = worker_class  # None: inference.worker.GpuWorker (benchmarks pass a subclass)
        self._worker: GpuWorker | None = None
        self.id = local_worker_id()

    @property
    def worker(self) -> GpuWorker:
        assert self._worker is not None, "start() first"
        return self._worker

    @property
    def cache(self) -> ModelCache:
        return self.worker.cache

    async def start(self) -> None:
        # The seconds of torch and diffusers, imported on a thread so the event loop (a connected bot's
        # heartbeat) never waits.
        await asyncio.to_thread(_load_inference)
        from inference.cache import ModelCache
        from inference.device import make_runtime
        from inference.worker import GpuWorker  # torch: loaded by the process that runs the GPU

        if self._cache is None:
            inf, config = self.config.inference, self.config
            runtime = make_runtime(inf.device, inf.dtype, config.cache_dir, inf.local_files_only, config.vram_limit)
            self._cache = ModelCache(runtime, inf.cache_size, inf.cache_location)
        self._worker = (self._worker_class or GpuWorker)(self._source, self._cache, loras=self._loras)
        self._worker.start()

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.stop()

    async def cancel(self, job_id: int) -> None:
        self.worker.cancel(job_id)

    def busy(self) -> bool:
        return self.worker.running_job is not None

    async def idle(self) -> None:
        await self.worker.idle()

    def plan(self, spec: ModelSpec, width: int, height: int, count: int) -> JobPlan | None:
        return self.worker.plan(spec, width, height, count)

    def refusal(self, spec: ModelSpec, width: int, height: int, count: int) -> str:
        return self.worker.refusal(spec, width, height, count)

    def footprint(self, spec: ModelSpec) -> Footprint:
        """The model's measured footprint once loaded, else its reference figures."""
        return self.cache.footprint(spec)

    def _budget(self) -> int | None:
        from inference.device import device_budget  # torch: already loaded by start()

        return device_budget(self.cache.runtime)

    def memory_status(self, spec: ModelSpec) -> MemoryStatus:
        """The model's memory setting and the mode it runs in: the loaded model's, else what its setting
        resolves to for the device memory usable now (what the next load picks)."""
        cache = self.cache
        budget = self._budget()
        backend = cache.loaded(spec)
        if backend is not None:
            return MemoryStatus(spec.memory, backend.memory_mode, "loaded", budget)
        return memory_status(spec, budget, cache.footprint(spec))

    async def switch_model(self, spec: ModelSpec) -> None:
        await self.worker.load_model(spec)

    def status(self) -> ExecutorStatus:
        worker = self._worker
        if worker is None:  # not started (or a failed start): no worker yet
            return ExecutorStatus("local", True, (), {})
        running = worker.running_job
        me = WorkerStatus(
            id=self.id,
            device=worker.cache.runtime.device,
            models=tuple(self.config.models),
            loaded=_loaded(worker.cache),
            busy_job=running,
            budget=None,  # not asked here: status() makes no device query (memory_status() does)
            local=True,
        )
        return ExecutorStatus("local", True, (me,), {} if running is None else {running: self.id})
