"""/describe: the tagger's tags of an uploaded image, as a prompt of the active model, with a button that
queues it (bot/discord_app/describe.py). The upload is checked (size, type, pixels) and tagged off the
event loop; the answer is ephemeral (the image and its tags stay the asker's)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import UserError
from bot.discord_app.acknowledge import InTime
from bot.discord_app.describe import DescribeGenerateButton, describe_text, describe_view
from bot.discord_app.interactions import guild_key, locale_of
from bot.prompts.describe import describe_prompt
from bot.prompts.dialects import load_dialect
from inference.tagger import ImageRejected, TaggerError, TagResult, open_image, shared_loader

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

log = logging.getLogger(__name__)

MB = 1024 * 1024
CONCURRENT_TAGGING = 2  # images decoded and tagged at once (each up to max_pixels; the CPU is shared)


def _megabytes(size: int) -> str:
    return f"{size / MB:.1f}".removesuffix(".0")


class Describe(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot
        self.tagger = shared_loader(bot.config.tagger_options)  # loaded (downloaded) on first use
        self.slots = asyncio.Semaphore(CONCURRENT_TAGGING)

    @property
    def max_bytes(self) -> int:
        return int(self.bot.config.tagger.max_upload_mb * MB)

    @app_commands.command(name="describe", description="Read an image's Danbooru tags, as a prompt of the active model")
    @app_commands.describe(image="The image (PNG, JPEG, WebP or GIF)")
    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # a first download of the tagger takes long
            limit = self.max_bytes
            if image.size > limit:  # before downloading it
                raise UserError("describe_too_big", size=_megabytes(image.size), limit=_megabytes(limit))
            try:
                data = await image.read()
            except discord.HTTPException as e:
                log.warning("could not download attachment %s: %s", image.id, e)
                raise UserError("describe_download_failed") from None
            async with self.slots:
                result = await asyncio.to_thread(self.tag, data)
            model = await self.bot.service.active_model(guild_key(interaction))
            dialect = load_dialect(self.bot.config.models[model].dialect)
            prompt = describe_prompt(dialect, result)
            if not prompt:
                raise UserError("describe_no_tags")
            locale = locale_of(interaction)
            await reply.send(
                describe_text(result, prompt, model, locale),
                view=describe_view(interaction.user.id, locale),
                allowed_mentions=discord.AllowedMentions.none(),
            )

    def tag(self, data: bytes) -> TagResult:
        """Decode and tag an upload (blocking: run in a thread). UserError for a bad file or no tagger."""
        settings = self.bot.config.tagger
        try:
            image = open_image(data, max_bytes=self.max_bytes, max_pixels=settings.max_pixels)
        except ImageRejected as e:
            params = dict(e.params)
            if e.reason == "too_big":
                params = {"size": _megabytes(len(data)), "limit": _megabytes(self.max_bytes)}
            raise UserError(f"describe_{e.reason}", **params) from None
        try:
            return self.tagger.get().tag(image)
        except TaggerError as e:
            log.error("the image tagger cannot be used: %s", e)
            raise UserError("describe_unavailable") from None
        finally:
            image.close()


async def setup(bot: AnimeBot) -> None:
    bot.add_dynamic_items(DescribeGenerateButton)  # the buttons of answers given before this start work too
    await bot.add_cog(Describe(bot))


async def teardown(bot: AnimeBot) -> None:
    bot.remove_dynamic_items(DescribeGenerateButton)
