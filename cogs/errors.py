"""The one error handler of the command tree (bot/discord_app/errors.py says how errors are answered)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord.ext import commands

from bot.discord_app.errors import report_error

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot


class Errors(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot
        self._previous = bot.tree.on_error
        bot.tree.on_error = report_error  # type: ignore[method-assign]

    async def cog_unload(self) -> None:
        self.bot.tree.on_error = self._previous  # type: ignore[method-assign]


async def setup(bot: AnimeBot) -> None:
    await bot.add_cog(Errors(bot))
