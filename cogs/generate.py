"""/generate: read the options and the channel's nsfw rule, submit (the service's request validation and
content policy decide; a refusal is a UserError), acknowledge with the queue position, hand the job to
delivery. Autocomplete from the active model's dialect and the tag database."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_app.acknowledge import InTime
from bot.discord_app.attachments import read_upload
from bot.discord_app.choices import (
    MAX_CHOICES,
    MAX_NAME,
    Choice,
    aspect_pairs,
    character_choices,
    choice,
    dialect_for,
    filter_choices,
    quality_pairs,
    rating_pairs,
    year_pairs,
)
from bot.discord_app.interactions import guild_key
from bot.discord_app.permissions import channel_allows_nsfw
from bot.discord_app.submit import submit_and_announce
from bot.prompts.builder import PromptChoices
from bot.prompts.loras import lora_completions
from bot.prompts.policy import normalize_text
from bot.prompts.requests import GenerationRequest, JobKind
from bot.prompts.tags import TagCategory, TagDatabase, TagImportError
from inference.types import SourceImage

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

log = logging.getLogger(__name__)


class Generate(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        """Build the tag search index (seconds for the full list) on a thread, before the bot connects:
        the service opens the tag database lazily, and no autocomplete may build it on the event loop."""
        tags = self.bot.service.tags
        if isinstance(tags, TagDatabase):
            try:
                await asyncio.to_thread(tags.prepare)
            except TagImportError as e:  # the file went bad since the service checked it
                log.warning("tag autocomplete unavailable: %s", e)

    @app_commands.command(name="generate", description="Make anime images from a prompt")
    @app_commands.describe(
        prompt="Danbooru tags and/or a description",
        negative="What to avoid",
        quality="Quality tags of the model",
        year="A year or period",
        rating="Content rating (nsfw ratings only in age-restricted channels)",
        artist="Artist style (comma-separated for several)",
        character="Character tag (comma-separated for several)",
        aspect="Aspect ratio / resolution bucket",
        seed="Seed for reproducible images",
        steps="Sampling steps",
        cfg="Guidance scale",
        count="How many images",
        lora="LoRAs of the active model, comma-separated, each with an optional :weight",
        hires="Hires fix: upscale and refine in the same job",
        image="Start from this image (img2img)",
        strength="With an image: how much of it changes (0.05-1)",
    )
    async def generate(
        self,
        interaction: discord.Interaction,
        prompt: str,
        negative: str | None = None,
        quality: str | None = None,
        year: str | None = None,
        rating: str | None = None,
        artist: str | None = None,
        character: str | None = None,
        aspect: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        count: int = 1,
        lora: str | None = None,
        hires: bool = False,
        image: discord.Attachment | None = None,
        strength: float | None = None,
    ) -> None:
        async with InTime(interaction) as reply:  # in time, however slow the store (a lock held elsewhere)
            bot = self.bot
            guild_id = guild_key(interaction)
            model = await bot.service.active_model(guild_id)
            nsfw_allowed = channel_allows_nsfw(interaction.channel)
            # The content policy decides in the service (resolve_request): nsfw ratings, banned words, SFW
            # negatives. Refusals come back as UserError, answered ephemerally by the error handler.
            choices = PromptChoices(
                prompt, negative or "", quality=quality, year=year, rating=rating, artist=artist, character=character
            )
            source: SourceImage | None = None
            kind: JobKind = "txt2img"
            if image is not None:  # img2img: the upload is checked and stored before anything is queued
                upload = await read_upload(bot, image)
                source, kind = upload.source, "img2img"
                aspect = aspect or f"{upload.width}:{upload.height}"  # the model's bucket nearest to the image's
            request = GenerationRequest(
                model,
                choices,
                seed=seed,
                steps=steps,
                cfg=cfg,
                aspect=aspect,
                count=count,
                nsfw_allowed=nsfw_allowed,
                lora=lora,
                hires=hires,
                strength=strength,
                kind=kind,
                source=source,
            )
            await submit_and_announce(bot, reply, request)

    @generate.autocomplete("quality")
    async def _quality(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        return filter_choices(quality_pairs(await dialect_for(interaction)), current)

    @generate.autocomplete("year")
    async def _year(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        return filter_choices(year_pairs(await dialect_for(interaction)), current)

    @generate.autocomplete("rating")
    async def _rating(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        pairs = rating_pairs(await dialect_for(interaction), channel_allows_nsfw(interaction.channel))
        return filter_choices(pairs, current)

    @generate.autocomplete("aspect")
    async def _aspect(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        return filter_choices(aspect_pairs(await dialect_for(interaction)), current)

    @generate.autocomplete("character")
    async def _character(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        return character_choices(await dialect_for(interaction), self.bot.service.tags, current)

    @generate.autocomplete("artist")
    async def _artist(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        dialect = await dialect_for(interaction)
        head, _, last = normalize_text(current).rpartition(",")  # autocomplete text is not normalized by Discord
        prefix = f"{head}, " if head else ""
        tags = self.bot.service.tags
        typed = last.strip().removeprefix(dialect.artist_prefix) if dialect.artist_prefix else last.strip()
        names: list[str] = []
        if isinstance(tags, TagDatabase):
            names = [m.name for m in tags.search(typed, TagCategory.ARTIST, MAX_CHOICES)]
        elif typed:
            names = [typed]
        pairs = [(prefix + dialect.format_artist(n), prefix + n) for n in names]
        return [choice(n, v) for n, v in pairs if v.strip()][:MAX_CHOICES]

    @generate.autocomplete("lora")
    async def _lora(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        """LoRAs of the active model's family allowed in this channel, for the last comma-separated item typed."""
        bot = self.bot
        family = bot.config.models[await bot.service.active_model(guild_key(interaction))].family
        nsfw_allowed = channel_allows_nsfw(interaction.channel)
        pairs = lora_completions(normalize_text(current), bot.service.loras, family, nsfw_allowed, MAX_CHOICES)
        return [choice(n, v) for n, v in pairs if len(v) <= MAX_NAME]


async def setup(bot: AnimeBot) -> None:
    await bot.add_cog(Generate(bot))
