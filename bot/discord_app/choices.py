"""Autocomplete choices for /generate and /model: (name, value) pairs from the active model's dialect,
filtered by what the user typed and cut to Discord's limits."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.discord_app.interactions import bot_of, guild_key
from bot.prompts.dialects import Dialect, load_dialect
from bot.prompts.policy import rating_options

MAX_CHOICES = 25
MAX_NAME = 100

Choice = app_commands.Choice[str]


def choice(name: str, value: str) -> Choice:
    """A choice within Discord's limits (name and value 1–100 characters)."""
    return app_commands.Choice(name=(name or value)[:MAX_NAME], value=value[:MAX_NAME])


def filter_choices(pairs: list[tuple[str, str]], current: str) -> list[Choice]:
    """Pairs (name, value) whose name or value contains the typed text, first those that start with it."""
    text = current.strip().lower()
    hits = [(n, v) for n, v in pairs if text in n.lower() or text in v.lower()]
    hits.sort(key=lambda p: not (p[0].lower().startswith(text) or p[1].lower().startswith(text)))
    return [choice(n, v) for n, v in hits[:MAX_CHOICES]]


async def dialect_for(interaction: discord.Interaction) -> Dialect:
    """The dialect of the model active in the interaction's server."""
    bot = bot_of(interaction)
    name = await bot.service.active_model(guild_key(interaction))
    return load_dialect(bot.config.models[name].dialect)


def quality_pairs(dialect: Dialect) -> list[tuple[str, str]]:
    return [(f"{key} — {terms}", key) for key, terms in dialect.quality_choices.items()]


def year_pairs(dialect: Dialect) -> list[tuple[str, str]]:
    periods = [(f"{key} — {terms}", key) for key, terms in dialect.period_choices.items()]
    years = [(str(y), str(y)) for y in range(dialect.year_max, dialect.year_min - 1, -1)]
    return periods + years


def rating_pairs(dialect: Dialect, nsfw_allowed: bool) -> list[tuple[str, str]]:
    """The ratings the content policy lets this channel offer."""
    return [(f"{key} — {terms}", key) for key, terms in rating_options(dialect, nsfw_allowed).items()]


def aspect_pairs(dialect: Dialect) -> list[tuple[str, str]]:
    return [(bucket.label, bucket.aspect) for bucket in dialect.buckets]
