"""The durable job queue: submit (persisted before it is acknowledged), fair order, cancellation,
pause, and the JobSource the GPU worker pulls from.

Fair order: users are served round-robin. A waiting job's rank is (jobs its owner has had started
since their queue was last empty) + (its place among the owner's waiting jobs); the lowest rank runs
first, ties by submission order. So one user's ten jobs do not make another user's single job wait
behind all ten: each of them waits at most one job per other waiting user.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bot.core.errors import UserError
from bot.core.events import EventBus, JobFinished, JobProgress, JobQueued, JobStarted, ModelLoading
from bot.core.jobs import ImageRecord, JobOrigin, JobRecord, JobRepository, JobState
from bot.core.quotas import Quotas
from bot.core.store import Store
from bot.prompts.requests import ResolvedRequest
from inference.specs import ModelSpec
from inference.types import LoadProgress, SavedImage, StepProgress, WorkItem

PAUSED_KEY = "queue_paused"


@dataclass(frozen=True)
class _Waiting:
    job_id: int
    owner_id: str


class JobQueue:
    def __init__(
        self,
        store: Store,
        quotas: Quotas,
        models: Mapping[str, ModelSpec],
        events: EventBus,
        data_dir: Path,
    ) -> None:
        self.store = store
        self.jobs = JobRepository(store)
        self.quotas = quotas
        self.models = models
        self.events = events
        self.data_dir = data_dir
        self._waiting: dict[int, _Waiting] = {}  # insertion order = submission order
        self._published: dict[int, int] = {}  # the last position announced for each waiting job
        self._served: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self._paused = False
        self.running: int | None = None

    async def start(self) -> list[int]:
        """Load the queue from the database; jobs a dead process left running are queued again.
        Returns the ids of those interrupted jobs."""
        interrupted = await self.jobs.requeue_interrupted()
        for job in await self.jobs.queued():
            self._waiting[job.id] = _Waiting(job.id, job.owner_id)
        self._paused = (await self.store.scalar("SELECT value FROM bot_state WHERE key = ?", (PAUSED_KEY,))) == "1"
        self._wakeup.set()
        self._publish_positions()
        return interrupted

    # -- order -----------------------------------------------------------------------------------

    def order(self) -> list[int]:
        """Waiting job ids in the order they will run."""
        seen: Counter[str] = Counter()
        ranked = []
        for seq, waiting in enumerate(self._waiting.values()):
            rank = self._served[waiting.owner_id] + seen[waiting.owner_id]
            seen[waiting.owner_id] += 1
            ranked.append((rank, seq, waiting.job_id))
        return [job_id for _, _, job_id in sorted(ranked)]

    def positions(self) -> dict[int, int]:
        """Every waiting job's position (1 = runs next)."""
        return {job_id: position for position, job_id in enumerate(self.order(), start=1)}

    def positions_of(self, owner_id: str) -> list[tuple[int, int]]:
        """(position, job id) of one user's waiting jobs, first to run first."""
        positions = self.positions()
        return sorted((positions[j], j) for j, waiting in self._waiting.items() if waiting.owner_id == owner_id)

    def position(self, job_id: int) -> int | None:
        """1 = runs next; None if not waiting."""
        return self.positions().get(job_id) if job_id in self._waiting else None

    def __len__(self) -> int:
        return len(self._waiting)

    def _publish_positions(self) -> None:
        """Announce the positions that changed (a new job at the end: one event, not one per job)."""
        positions = self.positions()
        for job_id, position in positions.items():
            if self._published.get(job_id) != position:
                self.events.publish(JobQueued(job_id, position))
        self._published = positions

    # -- submitting ------------------------------------------------------------------------------

    async def submit(
        self,
        resolved: ResolvedRequest,
        origin: JobOrigin,
        *,
        role_ids: Sequence[str] = (),
        reroll_of: int | None = None,
        exempt: bool = False,
    ) -> JobRecord:
        """Persist the job (and its quota usage) in one transaction, then queue it. Raises UserError
        when a quota refuses it; nothing is written then."""
        owner_id = origin.owner_id
        async with self.store.transaction():
            await self.jobs.ensure_user(owner_id, origin.owner_name)
            if not exempt:
                await self.quotas.check(owner_id, resolved.params.count, role_ids)
            job_id = await self.jobs.insert(resolved, origin, reroll_of)
            await self.quotas.record(owner_id, job_id, resolved.params.count)
        self._waiting[job_id] = _Waiting(job_id, owner_id)
        self._wakeup.set()
        self._publish_positions()
        job = await self.jobs.get(job_id)
        assert job is not None
        return job

    # -- cancelling, pausing ---------------------------------------------------------------------

    async def cancel(self, job_id: int, by: str, *, admin: bool = False) -> JobRecord:
        """Cancel a waiting job now. For a running one, record who asked and return it still running:
        the caller then tells the worker to stop it between steps. Only its owner or an admin may.
        Raises UserError."""
        job = await self.jobs.get(job_id)
        if job is None:
            raise UserError("job_not_found", job_id=job_id)
        if job.owner_id != by and not admin:
            raise UserError("not_your_job", job_id=job_id)
        if job.state.finished:
            raise UserError("job_finished", job_id=job_id)
        waiting = self._waiting.pop(job_id, None)
        if waiting is not None:
            # Out of the waiting list before the first await: the worker cannot claim it meanwhile.
            try:
                cancelled = await self.jobs.cancel(job_id, by)
            except BaseException:
                self._put_back({job_id: waiting})
                raise
            self._start_afresh_if_idle(waiting.owner_id)
            if cancelled:
                self.events.publish(JobFinished(job_id, JobState.CANCELLED.value))
            self._publish_positions()
        else:
            await self.jobs.request_cancel(job_id, by)
        refreshed = await self.jobs.get(job_id)
        assert refreshed is not None
        return refreshed

    async def clear(self, by: str) -> int:
        """Cancel every waiting job (admin), in one transaction."""
        taken, self._waiting = self._waiting, {}  # before the first await, as in cancel()
        try:
            async with self.store.transaction():
                cancelled = [job_id for job_id in taken if await self.jobs.cancel(job_id, by)]
        except BaseException:
            self._put_back(taken)
            raise
        self._served.clear()
        for job_id in cancelled:
            self.events.publish(JobFinished(job_id, JobState.CANCELLED.value))
        self._publish_positions()
        return len(cancelled)

    def _put_back(self, taken: dict[int, _Waiting]) -> None:
        """Undo a removal whose store write failed. Ids grow with submission, so id order is queue order."""
        self._waiting = dict(sorted({**self._waiting, **taken}.items()))
        self._wakeup.set()

    def _start_afresh_if_idle(self, owner_id: str) -> None:
        """Once a user has nothing waiting, their next job is ranked as a newcomer's (see the module doc)."""
        if not any(w.owner_id == owner_id for w in self._waiting.values()):
            self._served.pop(owner_id, None)

    @property
    def paused(self) -> bool:
        return self._paused

    async def set_paused(self, paused: bool) -> None:
        """Paused: the running job finishes, no new job starts. Survives restarts."""
        await self.store.execute(
            "INSERT INTO bot_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (PAUSED_KEY, "1" if paused else "0"),
        )
        self._paused = paused
        self._wakeup.set()

    # -- JobSource (for the worker) --------------------------------------------------------------

    async def next_job(self) -> WorkItem:
        while True:
            if not self._paused:
                for job_id in self.order():
                    item = await self._claim(job_id)
                    if item is not None:
                        return item
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _claim(self, job_id: int) -> WorkItem | None:
        waiting = self._waiting.pop(job_id, None)
        if waiting is None:
            return None  # cancelled since next_job() computed the order
        self.running = job_id  # before the first await: the job is never neither waiting nor running
        try:
            claimed = await self.jobs.claim(job_id)
        except BaseException:  # the store is busy (another process's lock, a full disk): it waits again
            self.running = None
            self._put_back({job_id: waiting})
            raise
        if not claimed:
            self.running = None
            self._start_afresh_if_idle(waiting.owner_id)
            return None  # cancelled elsewhere meanwhile
        self._served[waiting.owner_id] += 1
        self._start_afresh_if_idle(waiting.owner_id)
        job = await self.jobs.get(job_id)
        assert job is not None
        spec = self.models.get(job.model)
        if spec is None:
            await self.on_failed(job_id, f"The model {job.model} is no longer configured.")
            return None
        self.events.publish(JobStarted(job_id, job.model))
        self._publish_positions()
        return WorkItem(job_id, spec, job.params, self._image_paths(job))

    def _image_paths(self, job: JobRecord) -> tuple[Path, ...]:
        day = datetime.fromtimestamp(job.created_at).strftime("%Y-%m-%d")
        folder = self.data_dir / "images" / day
        return tuple(folder / f"{job.id}-{i}-{seed}.png" for i, seed in enumerate(job.params.seeds))

    def on_progress(self, job_id: int, progress: StepProgress) -> None:
        self.events.publish(JobProgress(job_id, progress.step, progress.total, progress.elapsed, progress.eta))

    def on_model_loading(self, model: str, progress: LoadProgress) -> None:
        self.events.publish(ModelLoading(model, progress.stage, progress.done, progress.total))

    def _release(self, job_id: int) -> None:
        if self.running == job_id:
            self.running = None

    async def on_done(self, job_id: int, images: list[SavedImage]) -> None:
        self._release(job_id)
        records = [
            ImageRecord(job_id, s.index, s.seed, self._relative(s.path), s.width, s.height, s.parameters)
            for s in images
        ]
        if await self.jobs.finish(job_id, records):
            self._finished(job_id, JobState.DONE)

    async def on_failed(self, job_id: int, message: str) -> None:
        self._release(job_id)
        if await self.jobs.fail(job_id, message):
            self._finished(job_id, JobState.FAILED, message)

    async def on_cancelled(self, job_id: int) -> None:
        self._release(job_id)
        job = await self.jobs.get(job_id)
        if await self.jobs.cancel(job_id, job.cancelled_by if job and job.cancelled_by else "system"):
            self._finished(job_id, JobState.CANCELLED)

    def _finished(self, job_id: int, state: JobState, error: str | None = None) -> None:
        self.events.publish(JobFinished(job_id, state.value, error))

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.data_dir))
        except ValueError:
            return str(path)
