"""Japanese command texts for Discord: a discord.py Translator reading data/i18n/<lang>.toml.

Command, group and option names, their descriptions, and the names of fixed choices are translated.
Discord shows each member the names of their own client language (a Japanese client shows /生成
プロンプト:…), while the interaction the bot receives always carries the English names, so the code
never sees a translated name. A text missing from the table stays English."""

from __future__ import annotations

import tomllib
from pathlib import Path

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where

I18N_DIR = Path(__file__).resolve().parents[2] / "data" / "i18n"

# Discord locales served by each table file.
LOCALES: dict[discord.Locale, str] = {discord.Locale.japanese: "ja"}

_SECTIONS: dict[Where, str] = {
    Where.command_name: "names",
    Where.group_name: "names",
    Where.parameter_name: "names",
    Where.command_description: "descriptions",
    Where.group_description: "descriptions",
    Where.parameter_description: "descriptions",
    Where.choice_name: "choices",
}


def load_table(language: str, directory: Path = I18N_DIR) -> dict[str, dict[str, str]]:
    """The sections of data/i18n/<language>.toml ({"descriptions": {english: text}, "choices": …})."""
    with (directory / f"{language}.toml").open("rb") as f:
        data = tomllib.load(f)
    return {section: {str(k): str(v) for k, v in values.items()} for section, values in data.items()}


class CommandTranslator(app_commands.Translator):
    def __init__(self, directory: Path = I18N_DIR) -> None:
        self.directory = directory
        self.tables: dict[str, dict[str, dict[str, str]]] = {}

    async def load(self) -> None:
        self.tables = {language: load_table(language, self.directory) for language in set(LOCALES.values())}

    async def unload(self) -> None:
        self.tables = {}

    def lookup(self, message: str, locale: discord.Locale, location: Where) -> str | None:
        language = LOCALES.get(locale)
        section = _SECTIONS.get(location)
        if language is None or section is None:
            return None
        return self.tables.get(language, {}).get(section, {}).get(message)

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContext
    ) -> str | None:
        return self.lookup(string.message, locale, context.location)
