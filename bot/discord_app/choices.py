"""Autocomplete choices for /generate and /model: (name, value) pairs from the active model's dialect,
filtered by what the user typed and cut to Discord's limits."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.discord_app.interactions import bot_of, guild_key
from bot.prompts.builder import NO_QUALITY, TagLookup
from bot.prompts.dialects import Dialect, load_dialect
from bot.prompts.policy import normalize_text, rating_options
from bot.prompts.tags import TagCategory, TagDatabase

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
    """The quality levels, and `none` (no quality tags: leaving the option empty adds the model's default)."""
    pairs = [(f"{key} — {terms}", key) for key, terms in dialect.quality_choices.items()]
    return [*pairs, (f"{NO_QUALITY} — no quality tags", NO_QUALITY)]


def year_pairs(dialect: Dialect) -> list[tuple[str, str]]:
    periods = [(f"{key} — {terms}", key) for key, terms in dialect.period_choices.items()]
    years = [(str(y), str(y)) for y in range(dialect.year_max, dialect.year_min - 1, -1)]
    return periods + years


def rating_pairs(dialect: Dialect, nsfw_allowed: bool) -> list[tuple[str, str]]:
    """The ratings the content policy lets this channel offer."""
    return [(f"{key} — {terms}", key) for key, terms in rating_options(dialect, nsfw_allowed).items()]


def aspect_pairs(dialect: Dialect) -> list[tuple[str, str]]:
    return [(bucket.label, bucket.aspect) for bucket in dialect.buckets]


def character_choices(dialect: Dialect, tags: TagLookup | None, current: str) -> list[Choice]:
    """Characters (tag category 4) whose name or an alias starts with the last comma-separated name typed,
    most posts first. Each shows the name as the model writes it, with the alias typed when that is what
    matched, else its first aliases; its value is the Danbooru tag name."""
    head, _, last = normalize_text(current).rpartition(",")  # autocomplete text is not normalized by Discord
    prefix = f"{head}, " if head else ""
    if not isinstance(tags, TagDatabase):
        typed = last.strip()
        return [choice(prefix + typed, prefix + typed)] if typed else []
    out: list[Choice] = []
    for match in tags.search(last.strip(), TagCategory.CHARACTER, MAX_CHOICES):
        shown = dialect.format_tag(match.name).replace("\\", "")
        if match.matched_alias is not None:
            shown += f" ← {match.matched_alias}"
        elif match.tag.aliases:
            shown += f" ({', '.join(match.tag.aliases[:2])})"
        value = prefix + match.name
        if len(value) <= MAX_NAME:
            out.append(choice(prefix + shown, value))
    return out
