"""/stats (admins, ephemeral): the last 24 hours' figures from the store: jobs by outcome, images, median wait
and run time, the busiest users, each model. A server admin sees the jobs asked in their server; a bot admin
may ask for every server's (`everywhere`, and in DMs). Rights are checked here in code."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.jobs import PeriodStats, UserFigures
from bot.core.messages import render
from bot.core.quotas import format_wait
from bot.discord_app.acknowledge import InTime
from bot.discord_app.interactions import guild_key, locale_of
from bot.discord_app.permissions import is_bot_admin, is_server_admin

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

PERIOD_SECONDS = 24 * 3600
DISCORD_USER = "discord:"


def user_text(user: UserFigures) -> str:
    """A Discord user as a mention (shown as their name; the bot's messages ping no one), else the name."""
    if user.owner_id.startswith(DISCORD_USER):
        return f"<@{user.owner_id.removeprefix(DISCORD_USER)}>"
    return user.name or user.owner_id


def stats_text(stats: PeriodStats, locale: str, everywhere: bool) -> str:
    scope = render("stats_scope_all" if everywhere else "stats_scope_server", locale)
    if stats.jobs == 0:
        return render("stats_empty", locale, scope=scope)
    states = stats.states
    none = render("stats_no_time", locale)
    lines = [
        render("stats_header", locale, scope=scope),
        render(
            "stats_jobs",
            locale,
            total=stats.jobs,
            done=states.get("done", 0),
            failed=states.get("failed", 0),
            cancelled=states.get("cancelled", 0),
            waiting=states.get("queued", 0) + states.get("running", 0),
        ),
        render("stats_images", locale, images=stats.images),
        render(
            "stats_times",
            locale,
            wait=none if stats.median_wait is None else format_wait(stats.median_wait),
            run=none if stats.median_run is None else format_wait(stats.median_run),
        ),
        render(
            "stats_users",
            locale,
            users=", ".join(
                render("stats_user", locale, name=user_text(u), jobs=u.jobs, images=u.images) for u in stats.users
            ),
        ),
        render("stats_models", locale),
    ]
    lines.extend(
        render("stats_model", locale, model=m.model, jobs=m.jobs, done=m.done, failed=m.failed, images=m.images)
        for m in stats.models
    )
    return "\n".join(lines)[:2000]


class Stats(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    @app_commands.command(name="stats", description="Admins: the last 24 hours: jobs, images, times, users, models")
    @app_commands.describe(everywhere="Bot admins: every server's jobs, not only this server's")
    async def stats(self, interaction: discord.Interaction, everywhere: bool = False) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            await reply.send(await self.text(interaction, everywhere))

    async def text(self, interaction: discord.Interaction, everywhere: bool) -> str:
        settings = self.bot.config.discord
        guild_id = guild_key(interaction)
        everywhere = everywhere or guild_id is None  # a DM has no server: only every server's figures
        allowed = (
            is_bot_admin(settings, interaction.user)
            if everywhere
            else is_server_admin(settings, interaction.user, guild_id)
        )
        if not allowed:
            raise UserError("admin_only")
        stats = await self.bot.service.stats(time.time() - PERIOD_SECONDS, None if everywhere else guild_id)
        return stats_text(stats, locale_of(interaction), everywhere)


async def setup(bot: AnimeBot) -> None:
    await bot.add_cog(Stats(bot))
