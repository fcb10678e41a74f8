"""The message catalog: every user-facing string, by key and language, read once from the
`[messages]` tables of data/i18n/<language>.toml (en.toml holds every key; another language may
leave one out, which then falls back to English)."""

from __future__ import annotations

import tomllib
from pathlib import Path

I18N_DIR = Path(__file__).resolve().parents[2] / "data" / "i18n"
LANGUAGES = ("en", "ja")


def load_catalog(directory: Path = I18N_DIR) -> dict[str, dict[str, str]]:
    """{language: {key: template}} from the [messages] table of each language's file."""
    catalog: dict[str, dict[str, str]] = {}
    for lang in LANGUAGES:
        with (directory / f"{lang}.toml").open("rb") as f:
            table = tomllib.load(f).get("messages", {})
        catalog[lang] = {str(key): str(text) for key, text in table.items()}
    return catalog


CATALOG = load_catalog()


def language(locale: str) -> str:
    """The catalog language of a Discord locale ("ja" → "ja", "en-US" → "en", unknown → "en")."""
    base = str(locale).split("-")[0].lower()
    return base if base in CATALOG else "en"


def render(key: str, locale: str = "en", **params: object) -> str:
    table = CATALOG[language(locale)]
    template = table.get(key) or CATALOG["en"][key]
    return template.format(**params)
