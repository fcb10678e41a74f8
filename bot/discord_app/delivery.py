"""Bringing a job's result to Discord: queue position, throttled progress, then the images with their
buttons, by editing the original response, or by a channel post that mentions the user when the
interaction token has expired or the edit failed. Each job is delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import discord

from bot.core.errors import StoreBusy
from bot.core.events import JobEnded, JobProgress, JobQueued, JobStarted, WatchEvent
from bot.core.jobs import JobRecord, JobState
from bot.core.messages import render
from bot.core.service import GenerationService
from bot.discord_app.acknowledge import retry_while_busy
from bot.discord_app.screening import UNCHECKED, Screener
from bot.prompts.policy import PolicyFields, content_policy

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.5  # seconds between two progress edits of one message
QUEUE_INTERVAL = 10.0  # seconds between two edits of one message's queue position
TOKEN_LIFETIME = timedelta(minutes=15)
TOKEN_MARGIN = timedelta(seconds=30)  # do not start an edit that may outlive the token
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# After a failed delivery (Discord down, a missing permission): try again after these pauses, then leave
# the job undelivered for the next start (deliver_pending).
RETRY_DELAYS: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
UNKNOWN_CHANNEL = 10003  # Discord's error code for a deleted channel
CHANNEL_GONE = "channel gone"  # where a result went whose channel was deleted
RECORD_PATIENCE = 600.0  # seconds to keep trying to record a sent result while the database is busy

ViewFactory = Callable[[JobRecord], discord.ui.View]


class Unreachable(Exception):
    """The original response can no longer be edited."""


@dataclass
class Target:
    """Where a job's messages go: the interaction's original response while its token lives, else a
    message the bot posted, else a new channel post."""

    channel_id: int
    user_id: int
    interaction: discord.Interaction | None = None
    message: discord.Message | None = None
    locale: str = "en"
    failed: bool = field(default=False)

    @property
    def mention(self) -> str:
        return f"<@{self.user_id}>"


def fit_image(data: bytes, limit: int, name: str) -> tuple[bytes, str]:
    """The PNG if it fits in `limit` bytes, else a JPEG re-encoding, at lower quality and then smaller,
    that does (blocking: run it in a thread)."""
    if len(data) <= limit:
        return data, name
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    stem = name.rsplit(".", 1)[0]
    scale = 1.0
    while True:
        resized = image
        if scale < 1.0:
            size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            resized = image.resize(size, Image.Resampling.LANCZOS)
        for quality in (90, 75, 60, 45):
            out = io.BytesIO()
            resized.save(out, "JPEG", quality=quality, optimize=True)
            if out.tell() <= limit or (resized.width <= 16 and quality == 45):
                return out.getvalue(), f"{stem}.jpg"
        scale *= 0.7


async def image_files(service: GenerationService, job: JobRecord, limit: int, spoiler: bool) -> list[discord.File]:
    """The job's images as attachments that each fit in `limit` bytes (read and fitted on threads)."""
    files = []
    for image in await service.images(job.id):
        path = service.image_path(image.path)
        data = await asyncio.to_thread(path.read_bytes)
        data, name = await asyncio.to_thread(fit_image, data, limit, path.name)
        files.append(discord.File(io.BytesIO(data), filename=name, spoiler=spoiler))
    return files


class Delivery:
    def __init__(self, bot: discord.Client, service: GenerationService, view_factory: ViewFactory) -> None:
        self.bot = bot
        self.service = service
        self.view_factory = view_factory
        self.screener = Screener(service)
        self._delivering: set[int] = set()
        self._followed: set[int] = set()  # jobs a task follows now
        self._sent: dict[int, str] = {}  # results sent by this process, and where (in case recording one failed)
        self.record_patience = RECORD_PATIENCE
        self.tasks: set[asyncio.Task[None]] = set()
        self.progress_interval = PROGRESS_INTERVAL
        self.queue_interval = QUEUE_INTERVAL
        self.retry_delays = RETRY_DELAYS

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run delivery work in a task that `cancel_all` stops."""
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, job: JobRecord, target: Target) -> None:
        """Follow the job in the background until its result is delivered (once per job)."""
        if job.id in self._followed:
            return
        self._followed.add(job.id)
        task = self.spawn(self.follow(job.id, target), f"deliver-{job.id}")
        task.add_done_callback(lambda _: self._followed.discard(job.id))

    async def follow(self, job_id: int, target: Target) -> None:
        try:
            job = await self._wait(job_id, target)
        except Exception:
            log.exception("following job %s failed; it is delivered at the next start", job_id)
            return
        for delay in (*self.retry_delays, None):
            try:
                await self.deliver(job, target)
                return
            except Exception as error:
                if delay is None:
                    log.exception("delivering job %s failed; it is delivered at the next start", job_id)
                    return
                log.warning("delivering job %s failed (%s); trying again in %.0f s", job_id, error, delay)
                target.failed = True  # the next try posts in the channel
                await asyncio.sleep(delay)

    async def _wait(self, job_id: int, target: Target) -> JobRecord:
        """Show the job's queue position and progress (throttled) until it finishes (service.watch)."""
        job = await self.service.job(job_id)
        prompt = job.request.choices.prompt[:200] if job is not None else ""
        last_edit: float | None = None  # loop time of the last progress edit
        loop = asyncio.get_running_loop()
        first = True
        async with contextlib.aclosing(self.service.watch(job_id)) as events:
            async for event in events:
                if isinstance(event, JobEnded):
                    return event.job
                if first and isinstance(event, JobQueued):
                    first = False
                    continue  # where it waits now: the acknowledgement says so; edits show changes
                first = False
                text = self._progress_text(event, job_id, prompt, target.locale)
                interval = self.queue_interval if isinstance(event, JobQueued) else self.progress_interval
                due = last_edit is None or loop.time() - last_edit >= interval or isinstance(event, JobStarted)
                if text is not None and due:
                    last_edit = loop.time()
                    await self._edit_progress(target, text)
        raise AssertionError("watch() ends with JobEnded")

    @staticmethod
    def _progress_text(event: WatchEvent, job_id: int, prompt: str, locale: str) -> str | None:
        if isinstance(event, JobQueued):
            return render("queued", locale, job_id=job_id, position=event.position, prompt=prompt)
        if isinstance(event, JobStarted):
            return render("running", locale, job_id=job_id, model=event.model)
        if isinstance(event, JobProgress):
            eta = max(0, round(event.eta))
            return render("progress", locale, job_id=job_id, step=event.step, total=event.total, eta=eta)
        return None

    async def _edit_progress(self, target: Target, text: str) -> None:
        if target.failed:
            return
        try:
            await self._edit(target, content=text)
        except (discord.HTTPException, Unreachable):
            target.failed = True  # the final result goes to the channel instead

    async def _edit(self, target: Target, **kwargs: Any) -> discord.Message:
        interaction = target.interaction
        if interaction is not None and token_alive(interaction):
            return await interaction.edit_original_response(**kwargs)
        if target.message is not None:
            return await target.message.edit(**kwargs)
        raise Unreachable("the interaction token has expired")

    async def deliver(self, job: JobRecord, target: Target) -> None:
        """Send the final result (images, or the error) exactly once."""
        if job.id in self._delivering:
            return
        self._delivering.add(job.id)
        try:
            fresh = await self.service.job(job.id)
            if fresh is None or fresh.delivered:
                return
            where = self._sent.get(job.id)  # sent by an earlier try whose recording failed: only record it
            if where is None:
                try:
                    message = await self._send_result(job, target)
                except discord.NotFound as error:
                    if error.code != UNKNOWN_CHANNEL:
                        raise
                    # Deleted: nothing can reach it, ever; recorded so that no later start tries again (the
                    # images stay in the owner's /history).
                    log.warning("the channel of job %s is gone; its result is not posted", job.id)
                    where = CHANNEL_GONE
                else:
                    if message is None:
                        return
                    where = f"{message.channel.id}:{message.id}"
                self._sent[job.id] = where  # never sent again from this process
            await self._record_delivery(job.id, where)
        finally:
            self._delivering.discard(job.id)

    async def _record_delivery(self, job_id: int, where: str) -> None:
        """Mark the job delivered, trying again while the database is busy (a lock held elsewhere)."""
        try:
            await retry_while_busy(lambda: self.service.mark_delivered(job_id, where), self.record_patience)
        except StoreBusy:
            log.error("job %s was delivered but the database stayed busy; not recorded", job_id)
            raise

    async def _send_result(self, job: JobRecord, target: Target) -> discord.Message | None:
        if job.state == JobState.DONE:
            screening = await self.screener.screen(job, await self._channel(target))
            if screening.action == "withhold":
                return await self._withhold(job, target, screening.rating or UNCHECKED, screening.count)
            spoiler = screening.action == "spoiler" or self.sensitive(job)
            try:
                files = await self._files(job, target, spoiler)
            except OSError as error:  # the PNGs were deleted or damaged: say so once, never retry forever
                log.warning("the images of job %s cannot be read (%s); telling its owner", job.id, error)
                content = render("job_images_missing", target.locale, mention=target.mention, job_id=job.id)
                return await self._send_text(target, content)
            summary = self._summary(job, target.locale)
            kwargs: dict[str, Any] = {"view": self.view_factory(job)}
            if self._editable(target):
                try:
                    return await self._edit(target, content=summary, attachments=files, **kwargs)
                except (discord.HTTPException, Unreachable):
                    files = await self._files(job, target, spoiler)  # a File is consumed by a failed upload
            content = render("result_for", target.locale, mention=target.mention, summary=summary)
            return await self.post(target, content=content, files=files, **kwargs)
        key = "job_cancelled" if job.state == JobState.CANCELLED else "job_failed"
        content = render(key, target.locale, mention=target.mention, job_id=job.id, error=job.error or "")
        return await self._send_text(target, content)

    async def _channel(self, target: Target) -> Any:
        return self.bot.get_channel(target.channel_id) or await self.bot.fetch_channel(target.channel_id)

    async def _withhold(self, job: JobRecord, target: Target, reason: str, count: int) -> discord.Message | None:
        """The result is not posted: recorded as withheld (its images stay in the store, /history and
        /withheld), its owner told privately (`_tell_withheld`), and the public progress message says only,
        neutrally, that the result was not posted in this channel (no rating, no image, no ping)."""
        await retry_while_busy(lambda: self.service.withhold(job.id, reason, count), self.record_patience)
        notice = await self._tell_withheld(job, target, reason)
        public = render("result_not_posted_here", target.locale, job_id=job.id)
        none = discord.AllowedMentions.none()
        if self._editable(target):
            try:
                return await self._edit(target, content=public, attachments=[], view=None, allowed_mentions=none)
            except (discord.HTTPException, Unreachable):
                pass
        if notice is not None:
            return notice
        # Neither a private word nor the progress message reached anyone: a short public line, which shows
        # nothing of the images and pings nobody (its owner finds the result with /withheld).
        channel = await self._channel(target)
        if not isinstance(channel, discord.abc.Messageable):
            return None
        return await channel.send(content=public, allowed_mentions=none)

    async def _tell_withheld(self, job: JobRecord, target: Target, reason: str) -> discord.Message | None:
        """Tell the owner, and only them, why the result was withheld, with a button that shows it to them:
        an ephemeral follow-up while the interaction token lives, else a DM; None when neither can be sent
        (DMs closed, the user unknown)."""
        from bot.discord_app.withheld import withheld_view  # here: withheld → views → rerolls → delivery

        key = "withheld_notice_unchecked" if reason == UNCHECKED else "withheld_notice"
        content = render(key, target.locale, job_id=job.id, rating=reason)
        kwargs: dict[str, Any] = {
            "view": withheld_view(job, target.locale),
            "allowed_mentions": discord.AllowedMentions.none(),
        }
        interaction = target.interaction
        if interaction is not None and token_alive(interaction):
            try:
                return await interaction.followup.send(content, ephemeral=True, wait=True, **kwargs)
            except discord.HTTPException as error:
                log.info("job %s: the private notice could not be sent as a follow-up (%s); trying a DM", job.id, error)
        try:
            user = self.bot.get_user(target.user_id) or await self.bot.fetch_user(target.user_id)
            return await user.send(content, **kwargs)
        except discord.HTTPException as error:  # Forbidden: DMs closed; NotFound: no such user
            log.info("job %s: its owner cannot be sent a DM (%s); the channel is told neutrally", job.id, error)
            return None

    @staticmethod
    def _editable(target: Target) -> bool:
        return not target.failed and (target.interaction is not None or target.message is not None)

    async def _send_text(self, target: Target, content: str) -> discord.Message | None:
        """A final text: edit the job's message if it can be edited, else post it in the channel."""
        if self._editable(target):
            try:
                return await self._edit(target, content=content)
            except (discord.HTTPException, Unreachable):
                pass
        return await self.post(target, content=content)

    async def post(self, target: Target, **kwargs: Any) -> discord.Message | None:
        channel = await self._channel(target)
        if not isinstance(channel, discord.abc.Messageable):
            return None
        return await channel.send(allowed_mentions=addressing(target.user_id), **kwargs)

    def _summary(self, job: JobRecord, locale: str) -> str:
        p = job.params
        seed = p.seeds[0] if len(p.seeds) == 1 else f"{p.seeds[0]}–{p.seeds[-1]}"
        return render(
            "result", locale, job_id=job.id, model=job.model, seed=seed, width=p.width, height=p.height,
            steps=p.steps, cfg=p.cfg,
        )

    def upload_limit(self, target: Target) -> int:
        if target.interaction is not None:
            return target.interaction.filesize_limit
        channel = self.bot.get_channel(target.channel_id)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _files(self, job: JobRecord, target: Target, spoiler: bool) -> list[discord.File]:
        return await image_files(self.service, job, self.upload_limit(target), spoiler)

    def sensitive(self, job: JobRecord) -> bool:
        """Spoilers where configured, as the content policy decided when the job was submitted. A job stored
        before verdicts existed (NULL) is read by the same policy, which never refuses here."""
        if not self.service.config.discord.spoiler_sensitive:
            return False
        verdict = job.verdict or content_policy().assess(PolicyFields.of(job.request.choices))
        return verdict.spoiler

    async def deliver_pending(self) -> None:
        """After a start: results that finished while the bot was away are posted in their channel
        (mentioning the owner), and jobs still waiting or running from before the restart are followed,
        so theirs are posted when they finish."""
        for job in await self.service.undelivered():
            target = self._channel_target(job)
            if target is None:
                continue
            try:
                await self.deliver(job, target)
            except Exception:  # one job (a channel gone, a bug) never holds up the others
                log.exception("could not deliver job %s after restart; trying again at the next start", job.id)
        for job in await self.service.unfinished():
            target = self._channel_target(job)
            if target is not None:
                self.start(job, target)

    @staticmethod
    def _channel_target(job: JobRecord) -> Target | None:
        if not job.owner_id.startswith("discord:") or job.channel_id is None:
            return None  # another frontend's job
        owner = int(job.owner_id.removeprefix("discord:"))
        return Target(int(job.channel_id), owner, locale=job.locale or "en")

    async def job_for_message(self, channel_id: int, message_id: int) -> int | None:
        """The job whose result is the given message."""
        return await self.service.job_for_delivery(f"{channel_id}:{message_id}")


def _log_failure(task: asyncio.Task[None]) -> None:
    """A delivery task that died of an exception says so at once (nobody awaits these tasks)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed; what it delivers is tried again at the next start", task.get_name(), exc_info=error)


def addressing(user_id: int) -> discord.AllowedMentions:
    """Allowed mentions of a message addressed to one user: that user may be pinged, nobody else (not the
    users, roles, @everyone or @here that a prompt in the same message may contain)."""
    return discord.AllowedMentions(users=[discord.Object(user_id)], roles=False, everyone=False, replied_user=False)


def token_alive(interaction: discord.Interaction) -> bool:
    return discord.utils.utcnow() - interaction.created_at < TOKEN_LIFETIME - TOKEN_MARGIN
