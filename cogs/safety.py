"""/safety (the rating check of results in this server: show it; server admins set or reset it, within what
the bot's configuration allows: bot/core/safety_settings.py) and /withheld (results that were not posted:
list your own, or, server admins, the server's; show one to yourself, ephemerally). Rights are checked here
and in bot/discord_app/withheld.py; the service writes every change to the audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.messages import render
from bot.core.safety_settings import EffectiveSafety
from bot.discord_app.acknowledge import InTime
from bot.discord_app.interactions import bot_of, guild_key, locale_of
from bot.discord_app.permissions import is_server_admin, owner_key
from bot.discord_app.withheld import ShowWithheldButton, show_withheld, withheld_list_text

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

LIST_LIMIT = 15
NO_PINGS = discord.AllowedMentions.none()


def server_of(interaction: discord.Interaction) -> str:
    """The interaction's server (these settings are per server); in a DM: UserError server_only."""
    guild_id = guild_key(interaction)
    if guild_id is None:
        raise UserError("server_only")
    return guild_id


def require_server_admin(interaction: discord.Interaction) -> None:
    """Manage Server in THIS server (or a bot admin); else admin_only, and nothing changes."""
    if not is_server_admin(bot_of(interaction).config.discord, interaction.user, guild_key(interaction)):
        raise UserError("admin_only")


def safety_text(safety: EffectiveSafety, config_rate: bool, config_sensitive: str, locale: str) -> str:
    def on_off(value: bool) -> str:
        return render("safety_on" if value else "safety_off", locale)

    status = (
        render("safety_status", locale, sensitive=render(f"sensitive_{safety.sensitive}", locale))
        if safety.rate_results
        else render("safety_status_off", locale)
    )
    lines = [
        status,
        render(
            "safety_config",
            locale,
            rating=on_off(config_rate),
            sensitive=render(f"sensitive_{config_sensitive}", locale),
        ),
    ]
    if safety.choice is not None:
        lines.append(render("safety_chosen", locale, by=safety.choice.updated_by.removeprefix("discord:")))
    if safety.clamped:
        lines.append(render("safety_clamped", locale))
    return "\n".join(lines)


class Safety(commands.Cog):
    safety = app_commands.Group(name="safety", description="The image check of results in this server")
    withheld = app_commands.Group(name="withheld", description="Results that were not posted in their channel")

    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    def _text(self, safety: EffectiveSafety, locale: str) -> str:
        config = self.bot.config.safety
        return safety_text(safety, config.rate_results, config.sensitive, locale)

    @safety.command(name="show", description="How results are checked in this server")
    async def show(self, interaction: discord.Interaction) -> None:
        guild_id = server_of(interaction)
        async with InTime(interaction, ephemeral=True) as reply:
            safety = await self.bot.service.safety(guild_id)
            await reply.send(self._text(safety, locale_of(interaction)), allowed_mentions=NO_PINGS)

    @safety.command(name="set", description="Server admins: how results are checked in this server")
    @app_commands.describe(
        sensitive="Results rated sensitive: spoilered, withheld or posted",
        rating="Rate results before posting them (off only if the bot's configuration allows it)",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        sensitive: Literal["spoiler", "withhold", "post"] | None = None,
        rating: bool | None = None,
    ) -> None:
        guild_id = server_of(interaction)
        require_server_admin(interaction)
        if sensitive is None and rating is None:
            raise UserError("safety_nothing")
        async with InTime(interaction, ephemeral=True) as reply:
            safety = await self.bot.service.set_safety(
                guild_id, owner_key(interaction.user), sensitive=sensitive, rate_results=rating
            )
            await reply.send(self._text(safety, locale_of(interaction)), allowed_mentions=NO_PINGS)

    @safety.command(name="reset", description="Server admins: follow the bot's configuration again")
    async def reset(self, interaction: discord.Interaction) -> None:
        guild_id = server_of(interaction)
        require_server_admin(interaction)
        async with InTime(interaction, ephemeral=True) as reply:
            await self.bot.service.clear_safety(guild_id, owner_key(interaction.user))
            safety = await self.bot.service.safety(guild_id)
            await reply.send(self._text(safety, locale_of(interaction)), allowed_mentions=NO_PINGS)

    @withheld.command(name="list", description="Your results that were not posted (admins: the server's)")
    @app_commands.describe(server="Server admins: every member's withheld results in this server")
    async def list_withheld(self, interaction: discord.Interaction, server: bool = False) -> None:
        if server:
            guild_id = server_of(interaction)
            require_server_admin(interaction)
        async with InTime(interaction, ephemeral=True) as reply:
            service = self.bot.service
            if server:
                jobs = await service.withheld_jobs(guild_id=guild_id, limit=LIST_LIMIT)
            else:
                jobs = await service.withheld_jobs(owner_id=owner_key(interaction.user), limit=LIST_LIMIT)
            text = withheld_list_text(jobs, locale_of(interaction), server=server)
            await reply.send(text, allowed_mentions=NO_PINGS)

    @withheld.command(name="show", description="See a withheld result, only you (its owner or a server admin)")
    @app_commands.describe(job="The job number")
    async def show_one(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        async with InTime(interaction, ephemeral=True) as reply:
            await show_withheld(reply, job)


async def setup(bot: AnimeBot) -> None:
    bot.add_dynamic_items(ShowWithheldButton)  # notices sent before a restart keep their button
    await bot.add_cog(Safety(bot))


async def teardown(bot: AnimeBot) -> None:
    bot.remove_dynamic_items(ShowWithheldButton)
