"""How a failed interaction is answered: UserError → its message, ephemeral; anything else → logged with
detail, and a short generic ephemeral message. The command tree's handler (cogs/errors.py) and every
persistent component use it."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.core.errors import UserError
from bot.core.messages import render
from bot.discord_app.interactions import locale_of, send_ephemeral

log = logging.getLogger(__name__)


def error_text(interaction: discord.Interaction, error: BaseException) -> str:
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, UserError):
        return render(error.key, locale_of(interaction), **error.params)
    command = interaction.command.qualified_name if interaction.command else "?"
    log.error("interaction %s (%s) failed", interaction.id, command, exc_info=error)
    return render("generic_error", locale_of(interaction))


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the user what went wrong (and log what they need not see)."""
    try:
        await send_ephemeral(interaction, error_text(interaction, error))
    except discord.HTTPException:
        log.warning("could not report an error to the user of interaction %s", interaction.id)
