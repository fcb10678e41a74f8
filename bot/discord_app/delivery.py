"""Bringing a job's result to Discord: queue position, throttled progress, then the images with their
buttons, by editing the original response, or by a channel post that mentions the user when the
interaction token has expired or the edit failed. Each job is delivered once.

A waiting job costs a small record (`Waiting`: where its result goes, what its message shows, what editing the
original response needs; no asyncio Task, no queue of events, no discord.Interaction). Delivery hears every event
through one listener (a dict lookup each): a changed shown position (JobQueued) schedules an edit, and the job's
follower (progress, the final delivery, retries: a task) starts when the job starts or finishes while waiting.
Position edits go through one pump: only when the text changes, at most one per `queue_interval` per message,
the last change shown (a trailing edit when the interval is up), at most `edits_in_flight` at a time, none for a
job that has started."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import io
import logging
import math
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import discord
from discord.http import handle_message_parameters
from discord.utils import MISSING
from discord.webhook.async_ import async_context

from bot.core.errors import StoreBusy
from bot.core.events import Event, JobEnded, JobFinished, JobProgress, JobQueued, JobStarted, WatchEvent
from bot.core.jobs import JobRecord, JobState, UnfinishedJob
from bot.core.messages import render
from bot.core.positions import is_exact
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
EDITS_IN_FLIGHT = 4  # position edits sent at once (the pump's bound; a burst waits its turn, newest text wins)
PENDING_PAGE = 1000  # jobs listed per read by deliver_pending
QUEUED_PROMPT_CHARS = 200  # the prompt shown in the "queued" message
EDIT_PATIENCE = 15.0  # seconds a started job's follower waits for its position edit in flight to land first

ViewFactory = Callable[[JobRecord], discord.ui.View]


class Unreachable(Exception):
    """The original response can no longer be edited."""


@dataclass(frozen=True, slots=True)
class OriginalResponse:
    """What editing an interaction's original response needs, instead of the discord.Interaction itself (its
    payload, user, member and channel objects: ~2.7 KB a job through simcord, more with Discord's payloads):
    the interaction's id (when its token was issued), the application's id, the token, the upload limit."""

    interaction_id: int
    application_id: int
    token: str
    filesize_limit: int

    @classmethod
    def of(cls, interaction: discord.Interaction) -> OriginalResponse:
        return cls(interaction.id, interaction.application_id, interaction.token, interaction.filesize_limit)

    def alive(self) -> bool:
        """Whether the token lives long enough to start an edit."""
        issued = discord.utils.snowflake_time(self.interaction_id)
        return discord.utils.utcnow() - issued < TOKEN_LIFETIME - TOKEN_MARGIN

    def webhook(self, bot: discord.Client) -> discord.Webhook:
        """The interaction's webhook (follow-ups), made as discord.Interaction.followup makes it: an application
        webhook (type 3: ephemeral messages allowed) on the bot's connection state (so views dispatch)."""
        return discord.Webhook.from_state(
            data={"id": self.application_id, "type": 3, "token": self.token}, state=bot._connection
        )

    async def edit(self, bot: discord.Client, **fields: Any) -> discord.WebhookMessage:
        """Edit the original response: the request discord.Interaction.edit_original_response makes (PATCH
        /webhooks/{application}/{token}/messages/@original), with `content`, `attachments`, `view`,
        `allowed_mentions` as there."""
        webhook = self.webhook(bot)
        view = fields.get("view", MISSING)
        with handle_message_parameters(
            content=fields.get("content", MISSING),
            attachments=fields.get("attachments", MISSING),
            view=view,
            allowed_mentions=fields.get("allowed_mentions", MISSING),
            previous_allowed_mentions=bot.allowed_mentions,
        ) as params:
            data = await async_context.get().edit_original_interaction_response(
                self.application_id,
                self.token,
                session=webhook.session,
                proxy=webhook.proxy,
                proxy_auth=webhook.proxy_auth,
                payload=params.payload,
                multipart=params.multipart,
                files=params.files,
            )
        message: discord.WebhookMessage = webhook._create_message(data, thread=MISSING)
        if view and not view.is_finished() and view.is_dispatchable():
            bot._connection.store_view(view, message.id)
        return message


@dataclass(slots=True)
class Target:
    """Where a job's messages go: the interaction's original response while its token lives, else a
    message the bot posted, else a new channel post. An `interaction` given is kept as its OriginalResponse
    once Delivery has the job (Delivery.start)."""

    channel_id: int
    user_id: int
    interaction: discord.Interaction | None = None
    message: discord.Message | None = None
    locale: str = "en"
    failed: bool = field(default=False)
    response: OriginalResponse | None = None
    shown: int | None = None  # the queue position the acknowledgement shows (bot/core/positions.py)

    @property
    def mention(self) -> str:
        return f"<@{self.user_id}>"

    def keep_light(self) -> None:
        """Keep only what editing the original response needs, not the interaction."""
        if self.interaction is not None:
            self.response = OriginalResponse.of(self.interaction)
            self.interaction = None


@dataclass(slots=True)
class Waiting:
    """A job waiting in the queue, as Delivery keeps it until it starts."""

    target: Target
    prompt: str  # the start of the prompt, as the "queued" message shows it
    shown: int | None  # the position its message shows; None: not known (the first announcement says)
    positions: bool = False  # whether its message shows positions (the queue announces them to it)
    wanted: int | None = None  # a position to show when its interval is up
    due: float | None = None  # loop time its edit is scheduled for
    edited_at: float = -math.inf  # loop time of its last position edit
    editing: asyncio.Task[None] | None = None  # its position edit in flight


def queued_text(locale: str, job_id: int, shown: int, prompt: str) -> str:
    """The "queued" message for a shown position (exact, or "about N")."""
    key = "queued" if is_exact(shown) else "queued_about"
    return render(key, locale, job_id=job_id, position=shown, prompt=prompt)


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
        self._followed: set[int] = set()  # jobs Delivery has (waiting, or a follower task runs)
        self._waiting: dict[int, Waiting] = {}  # jobs waiting in the queue, until they start or finish
        self._sent: dict[int, str] = {}  # results sent by this process, and where (in case recording one failed)
        self._due: list[tuple[float, int]] = []  # (loop time, job) of the position edits to make, earliest first
        self._pump: asyncio.Task[None] | None = None
        self._pump_sleeping = False
        self._wanted: set[int] = set()  # jobs with a position to show, not yet scheduled by the pump
        self._edit_slots: asyncio.Semaphore | None = None
        self._unchecked: set[int] = set()  # jobs registered as waiting whose state is still to be checked
        self._checker: asyncio.Task[None] | None = None
        self.record_patience = RECORD_PATIENCE
        self.tasks: set[asyncio.Task[None]] = set()
        self.progress_interval = PROGRESS_INTERVAL
        self.queue_interval = QUEUE_INTERVAL
        self.edits_in_flight = EDITS_IN_FLIGHT
        self.edit_patience = EDIT_PATIENCE
        self.retry_delays = RETRY_DELAYS
        self.position_edits = 0  # position edits sent (benchmarks)
        # Delivery's tasks run in a copy of the context Delivery was made in (the bot's setup), not in that of
        # whichever task published the event that starts them (the GPU worker's, the queue's announcer's).
        self._context = contextvars.copy_context()
        self._unlisten = service.events.listen(self._on_event)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run delivery work in a task that `cancel_all` stops."""
        task = self._context.copy().run(asyncio.create_task, work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def cancel_all(self) -> None:
        """Stop: no more events are heard, no position is followed, every task is cancelled (what is left is
        delivered at the next start)."""
        self._unlisten()
        for job_id, waiting in self._waiting.items():
            if waiting.positions:
                self.service.unfollow_positions(job_id)
        self._waiting.clear()
        self._due.clear()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def waiting(self) -> int:
        """How many waiting jobs Delivery keeps (each a small record, no task)."""
        return len(self._waiting)

    def start(self, job: JobRecord, target: Target) -> None:
        """Bring the job's result when it finishes (once per job). While it waits, its message shows its
        position (if it is an interaction's response); its follower starts when it starts."""
        if job.id in self._followed:
            return
        self._followed.add(job.id)
        target.keep_light()
        if job.state != JobState.QUEUED:
            self._begin(job.id, target)
            return
        self._register(job.id, target, job.request.choices.prompt[:QUEUED_PROMPT_CHARS], target.shown)
        self._check([job.id])  # it may have started before it was registered: its JobStarted unheard

    def _register(self, job_id: int, target: Target, prompt: str, shown: int | None) -> None:
        positions = (target.response is not None or target.message is not None) and not target.failed
        self._waiting[job_id] = Waiting(target, prompt, shown, positions)
        if positions:
            self.service.follow_positions(job_id, shown)

    def _check(self, job_ids: Collection[int]) -> None:
        """Begin the followers of those of `job_ids` that no longer wait (one read for a burst of them)."""
        self._unchecked.update(job_ids)
        if self._checker is None:
            self._checker = self.spawn(self._check_waiting(), "delivery-check")

    async def _check_waiting(self) -> None:
        try:
            while self._unchecked:
                job_ids, self._unchecked = self._unchecked, set()
                waiting = await self.service.still_waiting(job_ids)
                for job_id in job_ids - waiting:
                    self._begin_waiting(job_id)
        finally:
            self._checker = None

    def _on_event(self, event: Event) -> None:
        """Every event the service publishes: a dict lookup, and work only for the jobs Delivery keeps."""
        if not isinstance(event, JobQueued | JobStarted | JobFinished):
            return
        waiting = self._waiting.get(event.job_id)
        if waiting is None:
            return
        if isinstance(event, JobQueued):
            self._want(event.job_id, waiting, event.position)
        else:
            self._begin_waiting(event.job_id)

    def _begin_waiting(self, job_id: int) -> None:
        """The job no longer waits (started, or finished while waiting): its follower takes over."""
        waiting = self._waiting.pop(job_id, None)
        if waiting is None:
            return
        if waiting.positions:
            self.service.unfollow_positions(job_id)
        waiting.due = None
        self._begin(job_id, waiting.target, waiting.prompt, waiting.editing)

    def _begin(
        self, job_id: int, target: Target, prompt: str = "", after: asyncio.Task[None] | None = None
    ) -> None:
        task = self.spawn(self.follow(job_id, target, prompt, after), f"deliver-{job_id}")
        task.add_done_callback(lambda _: self._followed.discard(job_id))

    # -- position edits: one pump ---------------------------------------------------------------

    def _want(self, job_id: int, waiting: Waiting, shown: int) -> None:
        """The queue announced a new shown position: show it (now, or when the message's interval is up)."""
        if waiting.shown is None:
            waiting.shown = shown  # the first word of where it waits: its message said so already
            return
        if not waiting.positions or waiting.target.failed:
            return
        if shown == waiting.shown:
            waiting.wanted = None  # back to what the message shows: nothing to edit
            waiting.due = None
            return
        waiting.wanted = shown
        if waiting.due is None and waiting.editing is None:
            self._wanted.add(job_id)
            self._kick()

    def _kick(self) -> None:
        """Have the pump look at the newly wanted edits: start it, or wake it if it sleeps. (Times are read in
        the pump, never here: an event may come from another task's context, e.g. a test harness's clock.)"""
        if self._pump is None:
            self._pump = self.spawn(self._pump_edits(), "position-edits")
        elif self._pump_sleeping:
            self._pump_sleeping = False
            self._pump.cancel()
            self._pump = self.spawn(self._pump_edits(), "position-edits")

    def _stale(self, entry: tuple[float, int]) -> bool:
        waiting = self._waiting.get(entry[1])
        return waiting is None or waiting.due != entry[0]

    async def _pump_edits(self) -> None:
        """Send the position edits as they come due (each message's at most every `queue_interval`), at most
        `edits_in_flight` at a time; ends when none is left to make (a new one starts it again)."""
        loop = asyncio.get_running_loop()
        if self._edit_slots is None:
            self._edit_slots = asyncio.Semaphore(self.edits_in_flight)
        slots = self._edit_slots
        try:
            while True:
                now = loop.time()
                wanted, self._wanted = self._wanted, set()
                for job_id in wanted:
                    waiting = self._waiting.get(job_id)
                    if waiting is not None and waiting.wanted is not None and waiting.editing is None:
                        waiting.due = max(now, waiting.edited_at + self.queue_interval)
                        heapq.heappush(self._due, (waiting.due, job_id))
                while self._due and self._stale(self._due[0]):
                    heapq.heappop(self._due)
                if not self._due:
                    return
                due, job_id = self._due[0]
                if due > now:
                    self._pump_sleeping = True
                    try:
                        await asyncio.sleep(due - now)
                    finally:
                        self._pump_sleeping = False
                    continue
                heapq.heappop(self._due)
                await slots.acquire()
                waiting = self._waiting.get(job_id)
                if waiting is None or waiting.due != due:  # started, or changed back, while a slot was awaited
                    slots.release()
                    continue
                waiting.due = None
                waiting.editing = self.spawn(self._edit_position(job_id, waiting, slots), f"position-{job_id}")
        finally:
            if self._pump is asyncio.current_task():
                self._pump = None

    async def _edit_position(self, job_id: int, waiting: Waiting, slots: asyncio.Semaphore) -> None:
        try:
            shown, waiting.wanted = waiting.wanted, None
            if shown is None or shown == waiting.shown or waiting.target.failed:
                return
            target = waiting.target
            response = target.response
            if target.message is None and (response is None or not response.alive()):  # the token expired
                waiting.positions = False
                self.service.unfollow_positions(job_id)
                return
            text = queued_text(target.locale, job_id, shown, waiting.prompt)
            waiting.edited_at = asyncio.get_running_loop().time()
            await self._edit_progress(target, text)
            self.position_edits += 1
            waiting.shown = shown
        finally:
            slots.release()
            waiting.editing = None
            if (
                self._waiting.get(job_id) is waiting
                and waiting.wanted is not None
                and waiting.wanted != waiting.shown
                and waiting.positions
                and not waiting.target.failed
            ):  # it moved again while this edit was sent: shown when the interval is up
                self._wanted.add(job_id)
                self._kick()

    # -- following a started job ----------------------------------------------------------------

    async def follow(
        self, job_id: int, target: Target, prompt: str = "", after: asyncio.Task[None] | None = None
    ) -> None:
        """Show the job's progress and deliver its result (with retries); `after`: its position edit in
        flight, which lands before the first progress edit."""
        if after is not None:
            await asyncio.wait([after], timeout=self.edit_patience)
        try:
            job = await self._wait(job_id, target, prompt)
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

    async def _wait(self, job_id: int, target: Target, prompt: str) -> JobRecord:
        """Show the job's progress (throttled) until it finishes (service.watch)."""
        last_edit: float | None = None  # loop time of the last progress edit
        loop = asyncio.get_running_loop()
        first = True
        async with contextlib.aclosing(self.service.watch(job_id)) as events:
            async for event in events:
                if isinstance(event, JobEnded):
                    return event.job
                if first and isinstance(event, JobQueued):
                    first = False
                    continue  # where it waits now (queued again by the worker pool): edits show changes
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
            return queued_text(locale, job_id, event.position, prompt)
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
        interaction, response = target.interaction, target.response
        if interaction is not None and token_alive(interaction):
            return await interaction.edit_original_response(**kwargs)
        if response is not None and response.alive():
            return await response.edit(self.bot, **kwargs)
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
        interaction, response = target.interaction, target.response
        followup = interaction.followup if interaction is not None and token_alive(interaction) else None
        if followup is None and response is not None and response.alive():
            followup = response.webhook(self.bot)
        if followup is not None:
            try:
                return await followup.send(content, ephemeral=True, wait=True, **kwargs)
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
        return not target.failed and (
            target.interaction is not None or target.response is not None or target.message is not None
        )

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
        width, height = p.output_size()  # a hires fix's images are larger than its first pass
        return render(
            "result", locale, job_id=job.id, model=job.model, seed=seed, width=width, height=height,
            steps=p.steps, cfg=p.cfg,
        ) + kind_text(job, locale)

    def upload_limit(self, target: Target) -> int:
        if target.interaction is not None:
            return target.interaction.filesize_limit
        if target.response is not None:
            return target.response.filesize_limit
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
        (mentioning the owner), and jobs still waiting or running from before the restart are kept, so theirs
        are posted when they finish. Read a page at a time (ids, owner, channel, locale: no request is parsed);
        a waiting job costs a small record, no task, and no position posts (there is no message to edit)."""
        for job in await self.service.undelivered():
            target = self._channel_target(job.owner_id, job.channel_id, job.locale)
            if target is None:
                continue
            try:
                await self.deliver(job, target)
            except Exception:  # one job (a channel gone, a bug) never holds up the others
                log.exception("could not deliver job %s after restart; trying again at the next start", job.id)
        after = 0
        while page := await self.service.unfinished_page(after, PENDING_PAGE):
            after = page[-1].id
            registered: list[int] = []
            for unfinished in page:
                self._keep(unfinished, registered)
            self._check(registered)  # those that started or finished while the page was read

    def _keep(self, job: UnfinishedJob, registered: list[int]) -> None:
        target = self._channel_target(job.owner_id, job.channel_id, job.locale)
        if target is None or job.id in self._followed:
            return
        self._followed.add(job.id)
        if job.state == JobState.QUEUED:
            self._register(job.id, target, "", None)
            registered.append(job.id)
        else:
            self._begin(job.id, target)

    @staticmethod
    def _channel_target(owner_id: str, channel_id: str | None, locale: str | None) -> Target | None:
        if not owner_id.startswith("discord:") or channel_id is None:
            return None  # another frontend's job
        owner = int(owner_id.removeprefix("discord:"))
        return Target(int(channel_id), owner, locale=locale or "en")

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


def kind_text(job: JobRecord, locale: str) -> str:
    """" · ⬆ of #12" (and 🎲, "from your image") after a result's summary or a history line; nothing for a job
    made from a prompt."""
    if job.kind == "txt2img":
        return ""
    return " · " + render(f"history_kind_{job.kind}", locale, parent=job.parent_id)
