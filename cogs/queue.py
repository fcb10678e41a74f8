"""/queue: length, your positions, the running jobs' progress (redis mode: on which worker, and whether any
worker is online); bot admins can pause, resume and clear the
(global) queue; owners cancel their own jobs, server admins the jobs asked in their server, bot admins any
job. Rights are checked here in code (bot/discord_app/permissions.py); every admin action is audited."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.events import JobProgress
from bot.core.jobs import JobState
from bot.core.messages import render
from bot.core.positions import coarse, is_exact
from bot.discord_app.acknowledge import InTime
from bot.discord_app.interactions import guild_key, locale_of
from bot.discord_app.permissions import is_bot_admin, may_manage, owner_key

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

Action = Literal["show", "pause", "resume", "clear", "cancel"]
OWN_JOBS_SHOWN = 10  # positions listed by /queue; the rest are counted


def _your_position(locale: str, job_id: int, shown: int) -> str:
    """One of the user's jobs as its own message shows it: exact near the front, else "about N"."""
    key = "queue_your_position" if is_exact(shown) else "queue_your_position_about"
    return render(key, locale, job_id=job_id, position=shown)
RUNNING_SHOWN = 10  # running jobs listed by /queue (redis mode: one per busy worker)


class Queue(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    async def _now(self, job_id: int) -> JobProgress | None:
        """The running job's latest progress: the first event watch() gives (None before its first step)."""
        async with contextlib.aclosing(self.bot.service.watch(job_id)) as events:
            async for event in events:
                return event if isinstance(event, JobProgress) else None
        return None

    async def _running_line(self, job_id: int, locale: str) -> str:
        if (progress := await self._now(job_id)) is not None:
            return render(
                "queue_running_step",
                locale,
                job_id=job_id,
                step=progress.step,
                total=progress.total,
                eta=round(progress.eta),
            )
        return render("queue_running_start", locale, job_id=job_id)

    async def status_text(self, user: discord.abc.User, locale: str) -> str:
        service = self.bot.service
        lines = [render("queue_status", locale, length=await service.queue_length())]
        if await service.paused():
            lines.append(render("queue_is_paused", locale))
        positions, waiting = await service.queue_positions(owner_key(user), OWN_JOBS_SHOWN)
        if positions:
            shown = [_your_position(locale, job_id, coarse(position)) for position, job_id in positions]
            if waiting > len(positions):
                shown.append(render("queue_more", locale, count=waiting - len(positions)))
            lines.append(render("queue_yours", locale, positions=", ".join(shown)))
        else:
            lines.append(render("queue_none_yours", locale))
        status = service.executor_status()
        pool = status.mode == "redis"
        if pool and not status.online:
            lines.append(render("queue_redis_unreachable", locale))
        elif pool and not status.workers:
            lines.append(render("queue_no_worker_online", locale))
        running = (await service.running_jobs())[:RUNNING_SHOWN]
        if not running:
            lines.append(render("queue_idle", locale))
        for job_id in running:
            lines.append(await self._running_line(job_id, locale))
            if pool:  # which worker runs it (local mode: the one in this process)
                worker = status.running.get(job_id)
                key, params = ("queue_on_worker", {"worker": worker}) if worker else ("queue_on_no_worker", {})
                lines[-1] += " " + render(key, locale, **params)
        return "\n".join(lines)[:2000]

    @app_commands.command(name="queue", description="The queue: length, your position, the running job")
    @app_commands.describe(
        action="Bot admins: pause, resume, clear; anyone: cancel (your own job; admins: their server's)",
        job="Job id to cancel",
    )
    async def queue(self, interaction: discord.Interaction, action: Action = "show", job: int | None = None) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            await reply.send(await self.act(interaction, action, job))

    async def act(self, interaction: discord.Interaction, action: Action, job: int | None) -> str:
        """Do the action (admin rights checked here) and return the answer."""
        bot = self.bot
        locale = locale_of(interaction)
        user = interaction.user
        actor = owner_key(user)
        guild_id = guild_key(interaction)
        settings = bot.config.discord
        if action == "show":
            text = await self.status_text(user, locale)
        elif action == "cancel":
            if job is None:
                raise UserError("queue_job_needed")
            found = await bot.service.job(job)
            if found is None:
                raise UserError("job_not_found", job_id=job)
            # Its owner; an admin of the server it was asked in; a bot admin (any job).
            record = await bot.service.cancel(job, actor, admin=may_manage(settings, user, found))
            if record.owner_id != actor:
                await bot.service.audit(actor, guild_id, "queue.cancel", {"job": job, "owner": record.owner_id})
            key = "queue_cancelled" if record.state == JobState.CANCELLED else "queue_cancel_requested"
            text = render(key, locale, job_id=job)
        elif not is_bot_admin(settings, user):  # the queue is every server's: pause, resume, clear are global
            raise UserError("admin_only")
        elif action == "clear":
            count = await bot.service.clear_queue(actor)
            await bot.service.audit(actor, guild_id, "queue.clear", {"cancelled": count})
            text = render("queue_cleared", locale, count=count)
        else:
            paused = action == "pause"
            await bot.service.set_paused(paused)
            await bot.service.audit(actor, guild_id, f"queue.{action}", {})
            text = render("queue_paused_now" if paused else "queue_resumed_now", locale)
        return text


async def setup(bot: AnimeBot) -> None:
    await bot.add_cog(Queue(bot))
