"""Everything between "a user asked for images" and "images exist", for the CLI and Discord alike:
the store, quotas, the queue and the executor that runs the jobs (bot/core/executor.py: the in-process GPU
worker, or the pool of Redis workers), wired together."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bot.config import Config
from bot.core.audit import AuditLog
from bot.core.errors import StartError, StoreBusy, UserError
from bot.core.events import EventBus, ImagesWithheld, JobEnded, JobFinished, JobQueued, JobStarted, WatchEvent
from bot.core.executor import Executor, ExecutorStatus, LocalExecutor, waiting_for_worker
from bot.core.jobs import ImageRecord, JobOrigin, JobRecord, JobRepository, JobState, PeriodStats, UnfinishedJob
from bot.core.lock import LockError, ProcessLock
from bot.core.memory_info import MemoryStatus, too_large
from bot.core.queue import JobQueue
from bot.core.quotas import QuotaLimits, Quotas, QuotaStatus
from bot.core.safety_settings import (
    EffectiveSafety,
    SafetyChoice,
    SafetyRepository,
    Sensitive,
    effective,
    is_looser,
)
from bot.core.settings import GLOBAL, SettingsRepository
from bot.core.store import Store, StoreError
from bot.core.uploads import StoredUpload, file_sha256, store_upload
from bot.prompts.builder import TagLookup
from bot.prompts.requests import GenerationRequest, ResolvedRequest, resolve_request
from inference.loras import HashCache, LoraLibrary
from inference.memory import reference_footprint
from inference.specs import ModelSpec
from inference.types import ModelLoadError, SourceImage

if TYPE_CHECKING:
    from inference.cache import ModelCache
    from inference.tagger import TaggerLoader
    from inference.worker import GpuWorker

log = logging.getLogger(__name__)


def cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:local"


def _rate_file(loader: TaggerLoader, path: Path) -> tuple[str, float]:
    """The tagger's rating of the image file at `path` and its score (blocking: on a thread)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        result = loader.get().tag(image)
    return result.rating, result.rating_scores[result.rating]


ExecutorFactory = Callable[["GenerationService"], Executor]


def pool_dispatcher(service: GenerationService) -> Executor:
    """The executor of `[workers] mode = "redis"`: the dispatcher that hands the queue's jobs to `animebot
    worker` processes through Redis. Imported here, by name: the bot process of redis mode loads no torch."""
    from bot.core.pool.connection import connect
    from bot.core.pool.dispatcher import PoolDispatcher
    from bot.core.pool.protocol import Keys

    workers = service.config.workers
    return PoolDispatcher(
        service.queue,
        lambda: connect(workers.url),
        keys=Keys(workers.prefix),
        visibility_timeout=workers.visibility_timeout,
        max_result_bytes=int(workers.max_result_mb * 1024 * 1024),
    )


class GenerationService:
    def __init__(
        self,
        config: Config,
        cache: ModelCache | None = None,
        worker_class: type[GpuWorker] | None = None,
        *,
        executor_factory: ExecutorFactory | None = None,
    ) -> None:
        """`cache` and `worker_class` shape the in-process worker of local mode (tests and benchmarks);
        `executor_factory` replaces the executor [workers] mode names (tests of redis mode)."""
        self.config = config
        self._worker_class = worker_class  # None: inference.worker.GpuWorker (benchmarks pass a subclass)
        self._executor_factory = executor_factory
        self.events = EventBus()
        self._cache = cache
        self.tags: TagLookup | None = None
        self.loras = LoraLibrary()  # [loras] directory, read at start and by reload_loras()
        self._loras_reading = asyncio.Lock()
        self._store: Store | None = None
        self._queue: JobQueue | None = None
        self._executor: Executor | None = None
        self.interrupted: list[int] = []  # jobs a dead process left running, queued again at start
        self._opened: contextlib.AsyncExitStack | None = None  # what start() opened; close() closes it

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock the data directory, open the store and the tag database, load the queue, start the
        worker. Raises StartError with a one-line reason; whatever was opened by then is closed again,
        so a failed start never leaves a thread that keeps the process alive."""
        from bot.prompts.tags import TagImportError  # the tag index: loaded only by what serves prompts

        async with contextlib.AsyncExitStack() as opened:
            try:
                await self._open(opened)
            except (LockError, StoreError, StoreBusy, TagImportError) as e:
                raise StartError(str(e)) from None
            self._opened = opened.pop_all()

    async def _open(self, opened: contextlib.AsyncExitStack) -> None:
        config = self.config
        # First: a second process must not touch (migrate, requeue) the database another one runs.
        opened.callback(ProcessLock.acquire(config.database).release)
        self._store = await Store.open(config.database)
        opened.push_async_callback(self._store.close)
        q = config.quotas
        defaults = QuotaLimits(
            images_per_day=q.images_per_day or None,
            max_queued=q.max_queued_jobs or None,
            cooldown_seconds=q.cooldown_seconds,
        )
        self.quotas = Quotas(self._store, defaults)
        self._queue = JobQueue(self._store, self.quotas, config.models, self.events, config.data_dir)
        if config.settings.tags.import_default and not config.tags_db.exists():
            from bot.prompts.tags.bundled import ensure_tag_database

            await asyncio.to_thread(ensure_tag_database, config.tags_db)  # ~1 s, off the event loop
        if config.tags_db.is_file():
            from bot.prompts.tags import TagDatabase

            # Lazy: a checked file; the bot builds the search index when its autocomplete cog loads.
            self.tags = await asyncio.to_thread(TagDatabase.open, config.tags_db, lazy=True)
        await self.reload_loras()
        # Local mode: jobs a dead process left running are queued again now. Redis mode: they may be running
        # on a worker that is alive; the dispatcher reconciles them with what Redis holds.
        local = config.workers.mode == "local"
        self.interrupted = await self._queue.start(requeue=local)
        opened.push_async_callback(self._queue.close)

        # What cannot be used has been found by now (in milliseconds); then the executor: in local mode the
        # seconds of torch and diffusers, imported on a thread (the event loop never waits).
        if self._executor_factory is not None:
            executor = self._executor_factory(self)
        elif local:
            executor = LocalExecutor(config, self._queue, self._cache, self._worker_class, loras=self.lora_path)
        else:
            executor = pool_dispatcher(self)
        await executor.start()
        self._executor = executor
        opened.push_async_callback(executor.stop)

    async def close(self) -> None:
        """Stop the worker and the queue's announcer, close the store, release the data directory: in that
        order, each even if an earlier one fails. Safe to call twice, or after a failed start."""
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.aclose()

    @property
    def store(self) -> Store:
        """The database, for tests and maintenance tools; frontends use the methods below, and SQL lives in
        the repositories (bot/core/jobs.py, settings.py, audit.py, quotas.py)."""
        assert self._store is not None, "start() first"
        return self._store

    @property
    def _jobs(self) -> JobRepository:
        return self.queue.jobs

    @property
    def _settings(self) -> SettingsRepository:
        return self.queue.settings

    @property
    def _audit(self) -> AuditLog:
        return AuditLog(self.store)

    @property
    def queue(self) -> JobQueue:
        assert self._queue is not None, "start() first"
        return self._queue

    @property
    def executor(self) -> Executor:
        """Who runs the jobs: the in-process worker (local mode) or the Redis pool's dispatcher."""
        assert self._executor is not None, "start() first"
        return self._executor

    @property
    def worker(self) -> GpuWorker:
        """The in-process GPU worker of local mode (tests and benchmarks drive it); AssertionError otherwise."""
        executor = self.executor
        assert isinstance(executor, LocalExecutor), "no in-process worker: [workers] mode is not local"
        return executor.worker

    def executor_status(self) -> ExecutorStatus:
        """The workers, what they hold and run, and whether Redis answers (redis mode); no I/O."""
        return self.executor.status()

    def waiting_for_worker(self) -> bool:
        """Whether a job queued now waits until a worker comes online (redis mode: no worker, or Redis down)."""
        return waiting_for_worker(self.executor_status())

    # -- jobs ------------------------------------------------------------------------------------

    async def submit(
        self,
        request: GenerationRequest,
        owner_id: str,
        *,
        owner_name: str = "",
        guild_id: str | None = None,
        channel_id: str | None = None,
        role_ids: Sequence[str] = (),
        reroll_of: int | None = None,
        exempt: bool = False,
        locale: str | None = None,
    ) -> JobRecord:
        """Validate, check that the job fits the device, check quotas, persist and queue. Raises UserError;
        nothing changes then."""
        loras = self.config.loras
        resolved = resolve_request(
            request,
            self.config.models,
            self.tags,
            self.config.discord.banned_words,
            self.loras,
            max_loras=loras.max_per_job,
            max_lora_weight=loras.max_weight,
        )
        self._check_fits(resolved)
        origin = JobOrigin(owner_id, owner_name, guild_id, channel_id, locale)
        return await self.queue.submit(resolved, origin, role_ids=role_ids, reroll_of=reroll_of, exempt=exempt)

    def _check_fits(self, resolved: ResolvedRequest) -> None:
        """Pre-flight: a job that cannot run in any memory mode on this device is refused now (UserError
        job_too_large), before it is queued or counted, not after its steps. Cheap: nothing is loaded."""
        p, spec = resolved.params, resolved.spec
        executor = self.executor
        width, height = p.output_size()  # the hires fix's refine pass is the job's largest
        if executor.plan(spec, width, height, p.count) is not None:
            return
        # The measured footprint of the in-process worker's cache; the pool's workers measure their own.
        footprint = executor.footprint(spec) if isinstance(executor, LocalExecutor) else reference_footprint(spec)
        raise too_large(spec, footprint, self.memory_status(spec), width, height, p.count)

    # -- LoRAs -----------------------------------------------------------------------------------------

    async def reload_loras(self) -> LoraLibrary:
        """Read the LoRA folder again (off the event loop: new or changed files are hashed) and use what it holds
        from now on. Requests already queued keep the files they resolved to (by SHA-256)."""
        async with self._loras_reading:
            config = self.config
            # The hash cache's file is read on the thread too: nothing here touches the disk on the event loop.
            self.loras = await asyncio.to_thread(
                lambda: LoraLibrary.scan(config.loras_dir, HashCache(config.lora_hash_cache))
            )
        log.info(
            "LoRA library %s: %d LoRA(s), %d file(s) left out",
            config.loras_dir,
            len(self.loras.entries),
            len(self.loras.problems),
        )
        return self.loras

    def lora_path(self, sha256: str) -> Path | None:
        """Where this host keeps the LoRA file with this SHA-256 (the in-process worker's lookup), or None."""
        return self.loras.path_for(sha256)

    async def reroll(
        self,
        job_id: int,
        by: str,
        *,
        role_ids: Sequence[str] = (),
        exempt: bool = False,
        guild_id: str | None = None,
        channel_id: str | None = None,
        nsfw_allowed: bool | None = None,
        locale: str | None = None,
    ) -> JobRecord:
        """The same request with a new random seed, for the same model. Counts against the quota unless
        `exempt`. Asked from another channel (`guild_id`, `channel_id`), it goes there, under that channel's
        `nsfw_allowed`: an nsfw job is not rerun where nsfw is refused."""
        job = await self.job(job_id)
        if job is None:
            raise UserError("job_not_found", job_id=job_id)
        request = replace(job.request, model=job.model, seed=None)
        if nsfw_allowed is not None:
            request = replace(request, nsfw_allowed=nsfw_allowed and job.request.nsfw_allowed)
        return await self.submit(
            request,
            by,
            guild_id=guild_id if channel_id else job.guild_id,
            channel_id=channel_id or job.channel_id,
            role_ids=role_ids,
            reroll_of=job_id,
            exempt=exempt,
            locale=locale,
        )

    async def vary(
        self,
        job_id: int,
        index: int,
        by: str,
        *,
        role_ids: Sequence[str] = (),
        exempt: bool = False,
        guild_id: str | None = None,
        channel_id: str | None = None,
        nsfw_allowed: bool | None = None,
        locale: str | None = None,
    ) -> JobRecord:
        """🎲: a new job, linked to `job_id`, that makes one image by img2img from its image `index` with a new
        seed at the model's vary strength (the parent's size). Submitted like a reroll: the quota counts it, the
        content policy judges it again, the asking channel's nsfw rule applies. Raises UserError."""
        return await self._from_result(
            "vary", job_id, index, by, role_ids=role_ids, exempt=exempt, guild_id=guild_id,
            channel_id=channel_id, nsfw_allowed=nsfw_allowed, locale=locale,
        )

    async def upscale(
        self,
        job_id: int,
        index: int,
        by: str,
        *,
        scale: float | None = None,
        role_ids: Sequence[str] = (),
        exempt: bool = False,
        guild_id: str | None = None,
        channel_id: str | None = None,
        nsfw_allowed: bool | None = None,
        locale: str | None = None,
    ) -> JobRecord:
        """⬆: a new job, linked to `job_id`, that makes image `index` larger (x`scale`, None: the model's hires
        scale) and refines it by img2img at the model's hires strength, with the image's own seed. Submitted like
        a reroll (quota, content policy, the channel's nsfw rule). Raises UserError."""
        return await self._from_result(
            "upscale", job_id, index, by, scale=scale, role_ids=role_ids, exempt=exempt, guild_id=guild_id,
            channel_id=channel_id, nsfw_allowed=nsfw_allowed, locale=locale,
        )

    async def _from_result(
        self,
        kind: Literal["vary", "upscale"],
        job_id: int,
        index: int,
        by: str,
        *,
        scale: float | None = None,
        role_ids: Sequence[str],
        exempt: bool,
        guild_id: str | None,
        channel_id: str | None,
        nsfw_allowed: bool | None,
        locale: str | None,
    ) -> JobRecord:
        job = await self.job(job_id)
        if job is None:
            raise UserError("job_not_found", job_id=job_id)
        image = next((i for i in await self.images(job_id) if i.index == index), None)
        if job.state != JobState.DONE or image is None:
            raise UserError("image_not_found", job_id=job_id, index=index + 1)
        try:
            sha256 = await asyncio.to_thread(file_sha256, self.image_path(image.path))
        except OSError:
            raise UserError("image_gone", job_id=job_id, index=index + 1) from None
        request = replace(
            job.request,
            model=job.model,
            kind=kind,
            source=SourceImage(image.path, sha256, job_id, index),
            size=f"{image.width}x{image.height}",
            aspect=None,
            count=1,
            seed=image.seed if kind == "upscale" else None,
            strength=None,
            hires=False,
            scale=scale if kind == "upscale" else None,
        )
        if nsfw_allowed is not None:
            request = replace(request, nsfw_allowed=nsfw_allowed and job.request.nsfw_allowed)
        return await self.submit(
            request,
            by,
            guild_id=guild_id if channel_id else job.guild_id,
            channel_id=channel_id or job.channel_id,
            role_ids=role_ids,
            exempt=exempt,
            locale=locale,
        )

    async def store_upload(self, data: bytes) -> StoredUpload:
        """An image a user uploaded (img2img), checked and normalized off the event loop (bot/core/uploads.py) and
        stored once as inputs/<sha256>.png in the data directory, before any job uses it (a restart finds it).
        Raises UserError for a file that is not an image the bot takes."""
        return await store_upload(data, self.config.data_dir)

    async def watch(self, job_id: int) -> AsyncGenerator[WatchEvent, None]:
        """Follow one job: its shown queue position (bot/core/positions.py: exact in the front, else "about
        N") when it changes, JobStarted, JobProgress, and last JobEnded with the finished job (images recorded),
        after which the iteration ends. The first event tells where the job is now: its shown position (as the
        queue's announcer knows it, or with its next pass), its latest progress, or JobEnded if it had already
        finished. No event is lost between reading the job and listening: the job is followed before it is
        read. Raises UserError if there is no such job. Close it (`contextlib.aclosing`) when leaving early."""
        inbox = self.events.follow(job_id)
        following = False
        try:
            job = await self.job(job_id)
            if job is None:
                raise UserError("job_not_found", job_id=job_id)
            started = job.state != JobState.QUEUED
            position: int | None = None
            if job.state == JobState.QUEUED:
                following = True
                position = self.queue.follow_positions(job_id)
                if position is not None:
                    yield JobQueued(job_id, position)
            elif job.state == JobState.RUNNING:
                yield self.events.progress.get(job_id) or JobStarted(job_id, job.model)
            while not job.state.finished:
                event = await inbox.get()
                if isinstance(event, JobFinished):
                    fresh = await self.job(job_id)
                    assert fresh is not None
                    job = fresh
                    continue
                if isinstance(event, JobQueued):
                    if started or event.position == position:
                        continue  # announced late (it has started) or unchanged
                    position = event.position
                elif isinstance(event, JobStarted) and started:
                    continue  # published while the job was read, which found it running: already told
                else:
                    started = True
                if started and following:
                    following = False
                    self.queue.unfollow_positions(job_id)
                yield event
            yield JobEnded(job)
        finally:
            if following:
                self.queue.unfollow_positions(job_id)
            self.events.unfollow(job_id, inbox)

    def follow_positions(self, job_id: int, shown: int | None = None) -> None:
        """Have the queue announce the job's shown position (JobQueued) whenever it changes, until
        `unfollow_positions`; `shown`: what its user sees now (None: not known, announced with the next pass)."""
        self.queue.follow_positions(job_id, shown)

    def unfollow_positions(self, job_id: int) -> None:
        self.queue.unfollow_positions(job_id)

    async def wait(self, job_id: int) -> JobRecord:
        """Wait until the job is done, failed or cancelled (and its images are recorded)."""
        async with contextlib.aclosing(self.watch(job_id)) as events:
            async for event in events:
                if isinstance(event, JobEnded):
                    return event.job
        raise AssertionError("watch() ends with JobEnded")

    async def job(self, job_id: int) -> JobRecord | None:
        return await self._jobs.get(job_id)

    async def images(self, job_id: int) -> list[ImageRecord]:
        return await self._jobs.images(job_id)

    async def rate(self, job_id: int) -> list[ImageRecord]:
        """The job's images, each rated by the tagger ([tagger]; loaded once, shared with /describe) and the
        rating stored; images rated before (an earlier try) are not rated again. The tagger runs on a thread.
        Raises TaggerError (the model cannot be had or used) or OSError (an image cannot be read)."""
        from inference.tagger import shared_loader

        images = await self._jobs.images(job_id)
        loader = shared_loader(self.config.tagger_options)
        rated = []
        for image in images:
            if image.rating is None:
                rating, score = await asyncio.to_thread(_rate_file, loader, self.image_path(image.path))
                await self._jobs.set_rating(job_id, image.index, rating, score)
                image = replace(image, rating=rating, rating_score=score)
            rated.append(image)
        return rated

    async def withhold(self, job_id: int, reason: str, count: int) -> None:
        """Record that the job's `count` result images were not posted (`reason`: the rating, or "unchecked");
        they stay in the store and the owner's history."""
        if await self._jobs.withhold(job_id, reason):  # counted once, whatever the tries to tell the owner
            self.events.publish(ImagesWithheld(job_id, count, reason))

    async def mark_delivered(self, job_id: int, target: str = "") -> bool:
        """Record that the job's result reached its user (`target`: where, e.g. "channel:message").
        False if it already had: never deliver twice."""
        return await self._jobs.mark_delivered(job_id, target)

    async def undelivered(self) -> list[JobRecord]:
        """Finished jobs (done or failed) whose result has not reached the user yet."""
        return await self._jobs.undelivered()

    async def unfinished(self) -> list[JobRecord]:
        """Jobs waiting or running, oldest first."""
        return await self._jobs.unfinished()

    async def unfinished_page(self, after: int, limit: int) -> list[UnfinishedJob]:
        """One page of the jobs waiting or running (ids after `after`, oldest first): who asked and where the
        result goes, without reading the requests (what a restart needs for thousands of waiting jobs)."""
        return await self._jobs.unfinished_page(after, limit)

    async def still_waiting(self, job_ids: Collection[int]) -> set[int]:
        """Those of `job_ids` that are waiting now."""
        return await self._jobs.still_waiting(job_ids)

    async def job_for_delivery(self, target: str) -> int | None:
        """The job whose result was delivered to `target`."""
        return await self._jobs.job_for_delivery(target)

    async def cancel(self, job_id: int, by: str, *, admin: bool = False) -> JobRecord:
        job = await self.queue.cancel(job_id, by, admin=admin)
        if job.state == JobState.RUNNING:
            await self.executor.cancel(job_id)
        return job

    # -- the queue -------------------------------------------------------------------------------

    async def position(self, job_id: int) -> int | None:
        """The job's place in the queue (1 = runs next); None if it is not waiting."""
        return await self.queue.position(job_id)

    async def queue_positions(self, owner_id: str, limit: int = 10) -> tuple[list[tuple[int, int]], int]:
        """(position, job id) of a user's first `limit` waiting jobs, first to run first; and how many
        they have waiting in all."""
        return await self.queue.positions_of(owner_id, limit)

    async def queue_length(self) -> int:
        """Jobs waiting (not counting the running ones)."""
        return await self.queue.waiting()

    async def running_jobs(self) -> list[int]:
        """Jobs a worker runs now, first started first."""
        return await self.queue.running()

    async def paused(self) -> bool:
        return await self.queue.paused()

    async def set_paused(self, paused: bool) -> None:
        """Paused: running jobs finish, no new job starts. Survives restarts."""
        await self.queue.set_paused(paused)

    async def clear_queue(self, by: str) -> int:
        """Cancel every waiting job; how many were."""
        return await self.queue.clear(by)

    async def drain(self) -> None:
        """Wait until nothing is running, nothing waits (unless the queue is paused: then waiting jobs
        stay) and every result is recorded."""
        while (
            (await self.queue.waiting() and not await self.queue.paused())
            or await self.queue.running()
            or self.executor.busy()
        ):
            await asyncio.sleep(0.05)
        await self.executor.idle()

    async def state(self, key: str) -> str | None:
        """A value the bot keeps for itself (bot_state), e.g. the command tree's hash."""
        return await self._settings.state(key)

    async def set_state(self, key: str, value: str) -> None:
        await self._settings.set_state(key, value)

    async def history(self, owner_id: str, page: int = 0, per_page: int = 10) -> tuple[list[JobRecord], int]:
        return await self._jobs.history(owner_id, page, per_page)

    async def stats(self, since: float, guild_id: str | None = None) -> PeriodStats:
        """The figures of the jobs asked for since `since`, in one server (None: everywhere), for /stats."""
        return await self._jobs.period_stats(since, guild_id)

    async def quota(self, owner_id: str, role_ids: Sequence[str] = ()) -> QuotaStatus:
        return await self.quotas.status(owner_id, role_ids)

    async def set_quota(
        self,
        scope: Literal["user", "role"],
        target_id: str,
        actor: str,
        *,
        images_per_day: int | None = None,
        max_queued: int | None = None,
        cooldown_seconds: float | None = None,
        guild_id: str | None = None,
    ) -> QuotaLimits:
        """An admin's override of a user's or role's limits (0 counts: unlimited; None leaves a field as
        it was, the configured default at first), written to the audit log with it. Returns the limits
        the override now gives."""
        async with self.store.transaction():
            await self.quotas.set_override(scope, target_id, images_per_day, max_queued, cooldown_seconds, set_by=actor)
            detail = {
                "scope": scope,
                "target": target_id,
                "images_per_day": images_per_day,
                "max_queued": max_queued,
                "cooldown_seconds": cooldown_seconds,
            }
            await self.audit(actor, guild_id, "quota.set", detail)
            limits = await self.quotas.override(scope, target_id)
        assert limits is not None
        return limits

    async def clear_quota(
        self, scope: Literal["user", "role"], target_id: str, actor: str, *, guild_id: str | None = None
    ) -> bool:
        """Remove an override (back to the role's or the configured limits); audited. False if there was none."""
        async with self.store.transaction():
            cleared = await self.quotas.clear_override(scope, target_id)
            if cleared:
                await self.audit(actor, guild_id, "quota.clear", {"scope": scope, "target": target_id})
        return cleared

    async def quota_override(self, scope: Literal["user", "role"], target_id: str) -> QuotaLimits | None:
        return await self.quotas.override(scope, target_id)

    def image_path(self, relative: str) -> Path:
        return self.config.data_dir / relative

    # -- models ----------------------------------------------------------------------------------

    async def active_model(self, guild_id: str | None = None) -> str:
        """The guild's model, else the global default, else the config's (a name no longer configured is
        skipped). One query: autocomplete asks on every keystroke."""
        chosen = await self._settings.active_models(guild_id)
        for key in (guild_id or GLOBAL, GLOBAL):
            if chosen.get(key) in self.config.models:
                return str(chosen[key])
        return self.config.inference.default_model

    def memory_status(self, spec: ModelSpec) -> MemoryStatus:
        """The model's memory setting and the mode it runs in: the loaded model's, else what its setting
        resolves to for the device memory usable now (what the next load picks). Redis mode: the workers'."""
        return self.executor.memory_status(spec)

    async def switch_model(self, name: str, actor: str, guild_id: str | None = None) -> None:
        """Load `name` in the worker (after the job running now; the queue keeps its order and every
        job keeps the model it was submitted for), then make it the active model of the guild (or the
        global default). A failed load leaves the previous model active: UserError says why. Redis mode: the
        dispatcher loads nothing when a worker already holds the model."""
        spec = self.config.models.get(name)
        if spec is None:
            raise UserError("unknown_model", value=name, options=", ".join(self.config.models))
        previous = await self.active_model(guild_id)
        try:
            await self.executor.switch_model(spec)
        except ModelLoadError as e:
            await self.audit(actor, guild_id, "model.switch_failed", {"model": name, "error": str(e)})
            raise UserError("model_load_failed", model=name, reason=str(e), active=previous) from None
        async with self.store.transaction():
            await self._settings.set_active_model(guild_id, name)
            await self.audit(actor, guild_id, "model.switch", {"model": name, "previous": previous})

    async def audit(self, actor: str, guild_id: str | None, action: str, detail: Mapping[str, object]) -> None:
        await self._audit.record(actor, guild_id, action, detail)

    # -- the rating check's settings per server (bot/core/safety_settings.py) ---------------------

    @property
    def _safety(self) -> SafetyRepository:
        return SafetyRepository(self.store)

    async def safety(self, guild_id: str | None) -> EffectiveSafety:
        """The rating check as it applies in the server (the config's [safety] in DMs and where the server
        chose nothing; a choice looser than the config only where [safety] servers_may_loosen)."""
        s = self.config.safety
        choice = None if guild_id is None else await self._safety.choice(guild_id)
        return effective(s.rate_results, s.sensitive, s.servers_may_loosen, choice)

    async def set_safety(
        self, guild_id: str, actor: str, *, sensitive: Sensitive | None = None, rate_results: bool | None = None
    ) -> EffectiveSafety:
        """A server admin's choice (None leaves a field as it was), written to the audit log with it. A choice
        looser than the config is refused (UserError safety_looser) unless [safety] servers_may_loosen;
        nothing changes then. Returns the settings the server has now."""
        s = self.config.safety
        async with self.store.transaction():
            before = await self.safety(guild_id)
            stored = before.choice or SafetyChoice()
            merged = SafetyChoice(
                sensitive if sensitive is not None else stored.sensitive,
                rate_results if rate_results is not None else stored.rate_results,
            )
            if not s.servers_may_loosen and is_looser(s.rate_results, s.sensitive, merged):
                raise UserError("safety_looser")
            await self._safety.set_choice(guild_id, sensitive, rate_results, actor)
            detail = {
                "sensitive": sensitive,
                "rate_results": rate_results,
                "before": {"sensitive": before.sensitive, "rate_results": before.rate_results},
            }
            await self.audit(actor, guild_id, "safety.set", detail)
            return await self.safety(guild_id)

    async def clear_safety(self, guild_id: str, actor: str) -> bool:
        """Forget the server's choice (the config applies again); audited. False if it had none."""
        async with self.store.transaction():
            cleared = await self._safety.clear_choice(guild_id)
            if cleared:
                await self.audit(actor, guild_id, "safety.clear", {})
        return cleared

    async def rating_wanted(self) -> bool:
        """Whether results are rated anywhere: the config's [safety] rate_results, or a server that turned it on."""
        return self.config.safety.rate_results or await self._safety.any_rating_on()

    async def load_tagger(self) -> None:
        """Load the tagger ([tagger]; shared with /describe and the rating of results) now, on a thread, so the
        first rating or /describe does not wait for it. Raises TaggerError when it cannot be had."""
        from inference.tagger import shared_loader

        await asyncio.to_thread(shared_loader(self.config.tagger_options).get)

    async def withheld_jobs(
        self, *, guild_id: str | None = None, owner_id: str | None = None, limit: int = 10
    ) -> list[JobRecord]:
        """The newest jobs whose result was withheld: a server's (guild_id), or an owner's anywhere (owner_id)."""
        ids = await self._safety.withheld_job_ids(guild_id=guild_id, owner_id=owner_id, limit=limit)
        jobs = [await self.job(job_id) for job_id in ids]
        return [job for job in jobs if job is not None]
