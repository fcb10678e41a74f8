"""What every cog reads from an interaction (the bot, the user's message language, the server's key)
and an ephemeral reply that works before or after the interaction was answered."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import discord

from bot.core.messages import language

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot


def bot_of(interaction: discord.Interaction) -> AnimeBot:
    return cast("AnimeBot", interaction.client)


def locale_of(interaction: discord.Interaction) -> str:
    """The catalog language for the user's Discord locale ("ja", "en-US" → "en", unknown → "en")."""
    return language(str(interaction.locale.value))


def guild_key(interaction: discord.Interaction) -> str | None:
    """How the store names the interaction's server (None in DMs)."""
    return str(interaction.guild_id) if interaction.guild_id else None


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)
