"""The durable job queue: submit (persisted before it is acknowledged), fair order, cancellation,
pause, and the JobSource the GPU worker pulls from.

Fair order: users are served round-robin. A waiting job's rank is (jobs its owner has had started
since their queue was last empty) + (its place among the owner's waiting jobs); the lowest rank runs
first, ties by submission order. So one user's ten jobs do not make another user's single job wait
behind all ten: each of them waits at most one job per other waiting user.

The database is the queue's only state: the jobs' states and ranks, the owners' served counts
(queue_served) and the pause (bot_state) are rows, kept by bot/core/jobs.py, so any number of workers,
in this process or another, claim jobs safely (`claim_next`). In memory there is only a wake-up event
for this process's worker, and the positions last shown to the jobs someone follows (exact in the front,
"about N" further back: bot/core/positions.py), announced only when what a job shows changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from bot.core.announced import PAGE_ROWS, AnnouncedPositions
from bot.core.errors import UserError
from bot.core.events import EventBus, JobFinished, JobProgress, JobQueued, JobStarted, JobSubmitted, ModelLoading
from bot.core.jobs import UNREADABLE, ImageRecord, JobOrigin, JobRecord, JobRepository, JobState, UnreadableJob
from bot.core.positions import EXACT_POSITIONS, is_exact, shown_position
from bot.core.quotas import Quotas
from bot.core.settings import SettingsRepository
from bot.core.store import Store
from bot.core.uploads import read_source
from bot.prompts.requests import ResolvedRequest
from inference.specs import ModelSpec
from inference.types import LoadProgress, SavedImage, StepProgress, WorkItem

log = logging.getLogger(__name__)

PAUSED_KEY = "queue_paused"
SOURCE_GONE = "The image this job starts from can no longer be read, so it was not made."
# A worker waits for this process's wake-up event, or this long: jobs another process queued (or a
# resume it wrote) are noticed within it.
POLL_SECONDS = 2.0
# Between two passes of the position announcer over the front of the queue (the exact positions: a few rows),
# so that a burst of submissions costs a few passes, not one each.
ANNOUNCE_INTERVAL = 0.25
# Between two passes over the whole order (the coarse positions, "about N": a paged SQL pass, ~2 ms per 1,000
# waiting, resting as long between pages). Discord shows a position change at most every 10 s anyway
# (bot/discord_app/delivery.py).
COARSE_INTERVAL = 5.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobQueue:
    def __init__(
        self,
        store: Store,
        quotas: Quotas,
        models: Mapping[str, ModelSpec],
        events: EventBus,
        data_dir: Path,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.jobs = JobRepository(store)
        self.settings = SettingsRepository(store)
        self.quotas = quotas
        self.models = models
        self.events = events
        self.data_dir = data_dir
        self.worker_id = worker_id or default_worker_id()  # claimed_by of the jobs next_job() claims
        self._wakeup = asyncio.Event()  # a job may be claimable: the worker looks
        self._moved = asyncio.Event()  # positions may have changed: the announcer looks
        # The jobs whose shown position (bot/core/positions.py) is announced, and what each shows (None: not
        # known yet); how many follow each; those showing an exact position; those not known; the shown values
        # not yet written where SQL compares them (AnnouncedPositions) and the jobs to forget there.
        self._shown: dict[int, int | None] = {}
        self._follows: dict[int, int] = {}
        self._exact: set[int] = set()
        self._unknown: set[int] = set()
        self._unwritten: dict[int, int | None] = {}
        self._forgotten: set[int] = set()
        self._coarse_due = True
        self._last_coarse = -math.inf
        self.announced = AnnouncedPositions(store)
        self.announced_page_rows = PAGE_ROWS  # rows per statement of the pass over the whole order
        self.passes = 0  # announcer passes so far (tests, benchmarks)
        self._unrunnable: dict[int, str] = {}  # claimed jobs whose failure is still to be recorded
        self._announcer: asyncio.Task[None] | None = None
        self.announce_interval = ANNOUNCE_INTERVAL
        self.coarse_interval = COARSE_INTERVAL

    async def start(self, requeue: bool = True) -> list[int]:
        """Jobs a dead process left running are queued again (their ids are returned); positions are
        announced from now on. `requeue=False` (redis mode) leaves running jobs as they are: they may run on
        a worker that is alive, and the pool's dispatcher reconciles them."""
        interrupted = await self.jobs.requeue_interrupted() if requeue else []
        self._wakeup.set()
        self._moved.set()
        if self._announcer is None:
            self._announcer = asyncio.create_task(self._announce_positions(), name="queue-positions")
        return interrupted

    async def close(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
            self._announcer = None

    # -- order (all read from the database) ------------------------------------------------------

    async def order(self) -> list[int]:
        """Waiting job ids in the order they will run."""
        return await self.jobs.order()

    async def position(self, job_id: int) -> int | None:
        """1 = runs next; None if not waiting."""
        return await self.jobs.position(job_id)

    async def positions_of(self, owner_id: str, limit: int) -> tuple[list[tuple[int, int]], int]:
        """(position, job id) of one user's first `limit` waiting jobs, and how many they have waiting."""
        return await self.jobs.positions_of(owner_id, limit)

    async def waiting(self) -> int:
        return await self.jobs.waiting_count()

    async def running(self) -> list[int]:
        return await self.jobs.running()

    def shown_position(self, job_id: int) -> int | None:
        """The position a followed job shows (bot/core/positions.py), as last announced or given when it was
        followed; None if it is not followed or that is not known yet."""
        return self._shown.get(job_id)

    def follow_positions(self, job_id: int, shown: int | None = None) -> int | None:
        """Announce the job's shown position (JobQueued) whenever it changes, from now until
        `unfollow_positions` (once per follow). `shown`: what its user sees now (the acknowledgement's
        position); None: not known, the announcer reads it and announces it with its next pass. Returns what
        it shows as far as the queue knows (another follower may have followed it first)."""
        count = self._follows.get(job_id, 0)
        self._follows[job_id] = count + 1
        if count:
            return self._shown.get(job_id)
        self._shown[job_id] = shown
        self._forgotten.discard(job_id)
        self._unwritten[job_id] = shown
        if shown is None:
            self._unknown.add(job_id)
        elif is_exact(shown):
            self._exact.add(job_id)
        self._changed()  # a change between what the follower read and now is announced
        return shown

    def unfollow_positions(self, job_id: int) -> None:
        count = self._follows.get(job_id, 0)
        if count > 1:
            self._follows[job_id] = count - 1
            return
        if count == 1:
            del self._follows[job_id]
            del self._shown[job_id]
            self._exact.discard(job_id)
            self._unknown.discard(job_id)
            self._unwritten.pop(job_id, None)
            self._forgotten.add(job_id)

    def followed_positions(self) -> int:
        """How many jobs have their positions announced."""
        return len(self._shown)

    def announce(self) -> None:
        """The order changed elsewhere (jobs queued again by the worker pool): announce what changed soon."""
        self._changed()

    def _changed(self) -> None:
        """The order changed: the announcer looks again (off the caller's path, so an acknowledgement never
        waits for a pass over the queue): the front at its next pass, the rest with the next coarse pass."""
        self._coarse_due = True
        self._moved.set()

    async def _announce_positions(self) -> None:
        """Announce the shown positions that changed, of the jobs someone follows. Changes that come while a
        pass runs are folded into the next pass."""
        loop = asyncio.get_running_loop()
        await self.announced.create()
        while True:
            if self._coarse_due:  # the whole order is read again at most every coarse_interval
                timeout = self._last_coarse + self.coarse_interval - loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), max(0.0, timeout))
            else:
                await self._moved.wait()
            self._moved.clear()
            started = loop.time()
            try:
                await self._announce_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the queue's positions failed; trying again")
                await asyncio.sleep(1.0)
                self._changed()
                continue
            self.passes += 1
            # At least as long as the pass took: the announcer never has more than half the database's time.
            await asyncio.sleep(max(self.announce_interval, loop.time() - started))

    async def _announce_pass(self) -> None:
        """One pass: the front (EXACT_POSITIONS jobs, read exactly every pass), the followed jobs that left it
        or whose position is not known yet (a count each, when few), and, when due, the jobs anywhere in the
        order whose position left the window of what they show (one paged SQL pass: AnnouncedPositions)."""
        loop = asyncio.get_running_loop()
        found: dict[int, int] = {}  # job → exact position
        front = await self.jobs.front(EXACT_POSITIONS)
        for position, job_id in enumerate(front, start=1):
            if job_id in self._shown:
                found[job_id] = position
        unknown = len(self._unknown) > EXACT_POSITIONS
        for job_id in list(self._exact) + ([] if unknown else list(self._unknown)):
            if job_id in found or job_id not in self._shown:
                continue
            counted = await self.jobs.position(job_id)
            if counted is None:  # started or finished: nothing to show
                self._exact.discard(job_id)
                self._unknown.discard(job_id)
            else:
                found[job_id] = counted
        coarse = len(self._shown) > len(self._exact)  # a followed job beyond the front (or not known yet)
        due = self._coarse_due and loop.time() - self._last_coarse >= self.coarse_interval
        if not coarse:
            self._coarse_due = False  # nobody beyond the front to tell: no pass over the whole order
        if unknown or (coarse and due):
            self._coarse_due = False
            self._last_coarse = loop.time()
            unwritten, self._unwritten = self._unwritten, {}
            forgotten, self._forgotten = self._forgotten, set()
            try:
                await self.announced.write(unwritten, forgotten)
            except BaseException:
                self._unwritten = unwritten | self._unwritten
                self._forgotten |= forgotten
                raise
            for job_id, position in (await self.announced.changed(self.announced_page_rows)).items():
                found.setdefault(job_id, position)  # the front's are fresher
        for job_id, position in found.items():
            if job_id not in self._shown:
                continue  # unfollowed while the pass read
            previous = self._shown[job_id]
            shown = shown_position(position, previous)
            self._unknown.discard(job_id)
            if shown == previous:
                continue
            self._shown[job_id] = shown
            self._unwritten[job_id] = shown
            if is_exact(shown):
                self._exact.add(job_id)
            else:
                self._exact.discard(job_id)
            self.events.publish(JobQueued(job_id, shown))

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
        """Persist the job (and its quota usage) in one transaction, at its fair rank. Raises UserError
        when a quota refuses it, StoreBusy when the database is busy; nothing is written then (the job is
        read back inside the transaction: a read failing after the commit would have the caller, told
        "nothing was written", submit it again)."""
        owner_id = origin.owner_id
        async with self.store.transaction():
            await self.jobs.ensure_user(owner_id, origin.owner_name)
            if not exempt:
                await self.quotas.check(owner_id, resolved.params.count, role_ids)
            job_id = await self.jobs.insert(resolved, origin, reroll_of)
            await self.quotas.record(owner_id, job_id, resolved.params.count)
            job = await self.jobs.get(job_id)
            assert job is not None
        self.events.publish(JobSubmitted(job.id, job.model))
        self._wakeup.set()
        self._changed()
        return job

    # -- cancelling, pausing ---------------------------------------------------------------------

    async def cancel(self, job_id: int, by: str, *, admin: bool = False) -> JobRecord:
        """Cancel a waiting job now. For a running one (or one a worker claims meanwhile), record who
        asked and return it still running: the caller then tells the worker to stop it between steps.
        Only its owner or an admin may. Raises UserError."""
        job = await self.jobs.get(job_id)
        if job is None:
            raise UserError("job_not_found", job_id=job_id)
        if job.owner_id != by and not admin:
            raise UserError("not_your_job", job_id=job_id)
        if job.state.finished:
            raise UserError("job_finished", job_id=job_id)
        if job.state == JobState.QUEUED and await self.jobs.cancel_waiting(job_id, by):
            self.events.publish(JobFinished(job_id, JobState.CANCELLED.value))
            self._changed()
        else:
            await self.jobs.request_cancel(job_id, by)
        refreshed = await self.jobs.get(job_id)
        assert refreshed is not None
        return refreshed

    async def clear(self, by: str) -> int:
        """Cancel every waiting job (admin), in one transaction."""
        cancelled = await self.jobs.cancel_all_waiting(by)
        for job_id in cancelled:
            self.events.publish(JobFinished(job_id, JobState.CANCELLED.value))
        self._changed()
        return len(cancelled)

    async def paused(self) -> bool:
        return await self.settings.state(PAUSED_KEY) == "1"

    async def set_paused(self, paused: bool) -> None:
        """Paused: the running job finishes, no new job starts. Survives restarts."""
        await self.settings.set_state(PAUSED_KEY, "1" if paused else "0")
        self._wakeup.set()

    # -- JobSource (for the worker) --------------------------------------------------------------

    async def next_job(self) -> WorkItem:
        while True:
            self._wakeup.clear()  # before looking: a wake-up while we look is not lost
            item = await self.claim_next(self.worker_id)
            if item is not None:
                return item
            poll = asyncio.get_running_loop().call_later(POLL_SECONDS, self._wakeup.set)  # a timer, not a task
            try:
                await self._wakeup.wait()
            finally:
                poll.cancel()

    async def claim_next(self, worker_id: str) -> WorkItem | None:
        """Claim the next job in fair order for `worker_id` (it is running from now on); None if none
        waits or the queue is paused. Any number of workers, in this process or others, may call it. A job that
        starts from an image (img2img, vary, upscale) carries that image's bytes, read off the event loop; one
        whose image is gone is failed (SOURCE_GONE) and the next one claimed."""
        while True:
            job = await self.claim(worker_id)
            if job is None:
                return None
            try:
                source = await self.source_png(job)
            except OSError as e:
                log.error("job %s: its source image cannot be read: %s", job.id, e)
                self._unrunnable[job.id] = SOURCE_GONE
                await self._fail_unrunnable()
                continue
            return WorkItem(job.id, self.models[job.model], job.params, self.image_paths(job), source)

    async def source_png(self, job: JobRecord) -> bytes | None:
        """The bytes of the image `job` starts from (None: a txt2img job), checked against the SHA-256 it was
        queued with; read on a thread. Raises OSError when the file is gone, unreadable or changed."""
        source = job.params.source
        if source is None:
            return None
        return await asyncio.to_thread(read_source, self.data_dir, source)

    async def claim(
        self, worker_id: str, *, models: Collection[str] | None = None, token: str | None = None
    ) -> JobRecord | None:
        """claim_next's job record: the next job in fair order (among those for `models`, if given) running for
        `worker_id` from now on, with the dispatch `token` (the worker pool's dispatcher hands it out)."""
        await self._fail_unrunnable()
        if await self.paused():
            return None
        while True:
            try:
                job = await self.jobs.claim_next(worker_id, models, token)
            except UnreadableJob as e:
                self._changed()
                self._finished(e.job_id, JobState.FAILED, UNREADABLE)
                continue
            if job is None:
                return None
            self._changed()
            spec = self.models.get(job.model)
            if spec is None:
                self._unrunnable[job.id] = f"The model {job.model} is no longer configured."
                await self._fail_unrunnable()
                continue
            self.events.publish(JobStarted(job.id, job.model))
            return job

    async def _fail_unrunnable(self) -> None:
        """Record the failures of claimed jobs this process cannot run. One that meets a busy database stays
        here and raises: the worker asks again after a pause, and the job is failed then, not left running."""
        for job_id, message in list(self._unrunnable.items()):
            await self.on_failed(job_id, message)
            del self._unrunnable[job_id]

    def image_paths(self, job: JobRecord) -> tuple[Path, ...]:
        """Where image i of `job` is written (absolute)."""
        day = datetime.fromtimestamp(job.created_at).strftime("%Y-%m-%d")
        folder = self.data_dir / "images" / day
        return tuple(folder / f"{job.id}-{i}-{seed}.png" for i, seed in enumerate(job.params.seeds))

    def on_progress(self, job_id: int, progress: StepProgress) -> None:
        self.events.publish(JobProgress(job_id, progress.step, progress.total, progress.elapsed, progress.eta))

    def on_model_loading(self, model: str, progress: LoadProgress) -> None:
        self.events.publish(ModelLoading(model, progress.stage, progress.done, progress.total))

    async def on_done(self, job_id: int, images: list[SavedImage]) -> None:
        records = [
            ImageRecord(job_id, s.index, s.seed, self.relative(s.path), s.width, s.height, s.parameters)
            for s in images
        ]
        if await self.jobs.finish(job_id, records):
            self._finished(job_id, JobState.DONE)

    async def on_failed(self, job_id: int, message: str) -> None:
        if await self.jobs.fail(job_id, message):
            self._finished(job_id, JobState.FAILED, message)

    async def on_cancelled(self, job_id: int) -> None:
        job = await self.jobs.get(job_id)
        if await self.jobs.cancel(job_id, job.cancelled_by if job and job.cancelled_by else "system"):
            self._finished(job_id, JobState.CANCELLED)

    def _finished(self, job_id: int, state: JobState, error: str | None = None) -> None:
        self.events.publish(JobFinished(job_id, state.value, error))

    def relative(self, path: Path) -> str:
        """`path` as stored in the images table: relative to the data directory when under it."""
        try:
            return str(path.relative_to(self.data_dir))
        except ValueError:
            return str(path)
