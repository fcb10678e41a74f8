"""/quota (remaining images of the rolling 24 hours, reset time, jobs waiting) and /history (own jobs,
newest first, paged, with a way to rerun one: bot/discord_app/views.py). Both ephemeral."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.messages import render
from bot.discord_app.acknowledge import InTime
from bot.discord_app.interactions import locale_of
from bot.discord_app.permissions import owner_key, role_ids
from bot.discord_app.views import HISTORY_ITEMS, history_page

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

class Account(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    @app_commands.command(name="quota", description="Your remaining images and when more free up")
    async def quota(self, interaction: discord.Interaction) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            await reply.send(await self.quota_text(interaction))

    async def quota_text(self, interaction: discord.Interaction) -> str:
        locale = locale_of(interaction)
        user = interaction.user
        status = await self.bot.service.quota(owner_key(user), role_ids(user))
        unlimited = render("quota_unlimited", locale)
        limit = status.limits.images_per_day
        reset = render("quota_reset", locale, at=math.ceil(status.resets_at)) if status.resets_at else ""
        return render(
            "quota_status",
            locale,
            used=status.used,
            limit=unlimited if limit is None else limit,
            remaining=unlimited if status.remaining is None else status.remaining,
            reset=reset,
            queued=status.queued,
        )

    @app_commands.command(name="history", description="Your past jobs, newest first, with a way to rerun one")
    @app_commands.describe(page="Page number (5 jobs a page)")
    async def history(self, interaction: discord.Interaction, page: app_commands.Range[int, 1, 10000] = 1) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            text, view = await history_page(self.bot, interaction.user, page - 1, locale_of(interaction))
            if view is None:
                await reply.send(text)
            else:
                await reply.send(text, view=view)


async def setup(bot: AnimeBot) -> None:
    bot.add_dynamic_items(*HISTORY_ITEMS)  # lists opened before a restart keep working
    await bot.add_cog(Account(bot))


async def teardown(bot: AnimeBot) -> None:
    bot.remove_dynamic_items(*HISTORY_ITEMS)
