"""Executors of `[workers] mode = "redis"` for the service's and the cogs' tests, standing in for the pool
dispatcher (bot/core/pool/dispatcher.py, tested on its own with a real redis-server):

- `FakePool` claims jobs from the service's SQLite queue the way the dispatcher does (running, for a worker id)
  and records what the service asked of it; the test says which workers are online and whether Redis answers.
- `LateLocalPool` runs jobs on a real in-process GpuWorker (the tiny models), but reports redis mode and no
  worker online until the service first looks: a worker that connects right after the bot found none.

Neither imports torch at module level (the redis-mode bot process must not load it)."""

from __future__ import annotations

import asyncio

from bot.core.executor import ExecutorStatus, LocalExecutor, WorkerStatus
from bot.core.memory_info import MemoryStatus, memory_status
from bot.core.service import GenerationService
from inference.cache import ModelCache
from inference.memory import JobPlan, plan_job, reference_footprint
from inference.specs import ModelSpec


def worker(
    worker_id: str,
    models: tuple[str, ...] = ("tiny",),
    loaded: tuple[str, ...] = (),
    device: str = "cuda:0",
    busy_job: int | None = None,
    budget: int | None = None,
) -> WorkerStatus:
    return WorkerStatus(worker_id, device, models, loaded, busy_job, budget)


class FakePool:
    def __init__(self, service: GenerationService, workers: tuple[WorkerStatus, ...] = (), online: bool = True):
        self.service = service
        self.workers = workers
        self.online = online
        self.running: dict[int, str] = {}
        self.budget: int | None = None  # the largest budget of the workers (None: no limit known)
        self.cancelled: list[int] = []
        self.switched: list[str] = []
        self.started = False
        self.stopped = False
        self.idled = 0

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def take(self, worker_id: str) -> int:
        """A worker's slot is free: claim the next job in the fair order for it (as the dispatcher does)."""
        item = await self.service.queue.next_job()
        self.running[item.job_id] = worker_id
        return item.job_id

    async def finish(self, job_id: int) -> None:
        """The worker's result: the job is recorded failed (no images to write in this fake)."""
        await self.service.queue.on_failed(job_id, "finished by the fake pool")
        del self.running[job_id]

    async def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    def busy(self) -> bool:
        return bool(self.running)

    async def idle(self) -> None:
        self.idled += 1

    def plan(self, spec: ModelSpec, width: int, height: int, count: int) -> JobPlan | None:
        return plan_job(self.budget, reference_footprint(spec), width, height, count, "minimal")

    def refusal(self, spec: ModelSpec, width: int, height: int, count: int) -> str:
        return "too large for every worker"

    def memory_status(self, spec: ModelSpec) -> MemoryStatus:
        return memory_status(spec, self.budget, reference_footprint(spec))

    async def switch_model(self, spec: ModelSpec) -> None:
        self.switched.append(spec.name)

    def status(self) -> ExecutorStatus:
        return ExecutorStatus("redis", self.online, self.workers if self.online else (), dict(self.running))


class LateLocalPool(LocalExecutor):
    """A real in-process worker that "connects" only after the service found no worker online."""

    def __init__(self, service: GenerationService) -> None:
        super().__init__(service.config, service.queue)
        self.seen_offline = False
        self._joined: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pass  # no worker yet

    async def _join(self) -> None:
        await LocalExecutor.start(self)

    async def stop(self) -> None:
        if self._joined is not None:
            await asyncio.gather(self._joined, return_exceptions=True)
        await super().stop()

    def busy(self) -> bool:
        return self._joined is None or not self._joined.done() or super().busy()

    async def idle(self) -> None:
        if self._joined is not None:
            await self._joined
            await super().idle()

    def status(self) -> ExecutorStatus:
        if self._joined is None:
            self.seen_offline = True
            self._joined = asyncio.get_running_loop().create_task(self._join())
            return ExecutorStatus("redis", True, (), {})
        local = super().status()
        return ExecutorStatus("redis", True, local.workers, local.running)

    def plan(self, spec: ModelSpec, width: int, height: int, count: int) -> JobPlan | None:
        return plan_job(None, reference_footprint(spec), width, height, count)


class InProcessPool(LocalExecutor):
    """A real in-process worker (the tiny models) reported as the pool of redis mode: one worker online, or
    none while the test sets `offline` (the worker still runs what it took)."""

    def __init__(self, service: GenerationService, cache: ModelCache) -> None:
        super().__init__(service.config, service.queue, cache)
        self.offline = False

    def status(self) -> ExecutorStatus:
        local = super().status()
        if self.offline:
            return ExecutorStatus("redis", True, (), {})
        return ExecutorStatus("redis", True, local.workers, local.running)
