"""The 🔄 reaction under a result, and the result buttons' registration (the buttons themselves live in
bot/discord_app/views.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

import discord
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.jobs import JobRecord
from bot.core.messages import language
from bot.discord_app.permissions import owner_key
from bot.discord_app.rerolls import job_or_error, reroll
from bot.discord_app.views import BUTTONS, REROLL_EMOJI

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

log = logging.getLogger(__name__)


class Results(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if str(payload.emoji) != REROLL_EMOJI or self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        job_id = await self.bot.deliveries.job_for_message(payload.channel_id, payload.message_id)
        if job_id is None:
            return
        user = payload.member or self.bot.get_user(payload.user_id) or discord.Object(payload.user_id)
        channel = self.bot.get_channel(payload.channel_id)
        if channel is None:  # not cached: its server and nsfw rule come from Discord, never guessed
            try:
                channel = await self.bot.fetch_channel(payload.channel_id)
            except discord.HTTPException as e:
                log.warning("reaction reroll of job %s: channel %s unreadable (%s)", job_id, payload.channel_id, e)
                return
        try:
            job = await job_or_error(self.bot, job_id)
            await reroll(self.bot, job_id, cast(discord.abc.User, user), channel, locale=self.locale(job, payload))
        except UserError as e:
            log.info("reaction reroll of job %s by %s refused: %s", job_id, payload.user_id, e)

    def locale(self, job: JobRecord, payload: discord.RawReactionActionEvent) -> str:
        """A reaction carries no locale: the owner's from their request, else the server's language."""
        if job.locale and job.owner_id == owner_key(discord.Object(payload.user_id)):
            return job.locale
        guild = self.bot.get_guild(payload.guild_id) if payload.guild_id else None
        return language(guild.preferred_locale.value) if guild is not None else "en"


async def setup(bot: AnimeBot) -> None:
    bot.add_dynamic_items(*BUTTONS)  # the buttons of results posted before this start work too
    await bot.add_cog(Results(bot))


async def teardown(bot: AnimeBot) -> None:
    bot.remove_dynamic_items(*BUTTONS)
