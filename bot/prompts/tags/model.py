"""The tag list's vocabulary: Tag, TagCategory, TagMatch, the two errors, and ``normalize`` (the search key)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import IntEnum


class TagImportError(Exception):
    """The tag CSV (or the tag database) cannot be used; the message says why, for a human."""


class TagDatabaseError(TagImportError):
    """The tag database is missing, not ours, corrupt or from another schema version.

    A subclass of ``TagImportError`` so ``except TagImportError`` covers both import and open.
    """


class TagDatabaseBusy(TagDatabaseError):
    """Another process holds a lock on the tag database: nothing is wrong with it, try again later."""


class TagCategory(IntEnum):
    GENERAL = 0
    ARTIST = 1
    COPYRIGHT = 3
    CHARACTER = 4
    META = 5

    @classmethod
    def parse(cls, text: str | int) -> TagCategory:
        """``"artist"``, ``"ARTIST"``, ``"1"``, ``1``, ``"series"`` (= copyright) -> TagCategory.

        Raises ``ValueError`` with the accepted spellings.
        """
        if isinstance(text, int):
            return cls(text)
        word = text.strip().lower()
        if word.isdigit():
            return cls(int(word))
        aliases = {"series": cls.COPYRIGHT, "copyrights": cls.COPYRIGHT}
        if word in aliases:
            return aliases[word]
        for member in cls:
            if word in (member.name.lower(), member.name.lower() + "s"):
                return member
        names = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"unknown tag category {text!r} (expected one of: {names}, series, or 0/1/3/4/5)")


@dataclass(frozen=True, slots=True)
class Tag:
    name: str  # canonical Danbooru name, underscored: "firefly_(honkai:_star_rail)"
    category: TagCategory
    post_count: int
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TagMatch:
    """One search result: the tag, and the alias the typed text matched (None: the name matched)."""

    tag: Tag
    matched_alias: str | None = None

    @property
    def name(self) -> str:
        return self.tag.name

    @property
    def category(self) -> TagCategory:
        return self.tag.category

    @property
    def post_count(self) -> int:
        return self.tag.post_count



_WS_RUN = re.compile(r"[\s_]+")
_ASCII_NEEDS_WORK = re.compile(r"[\s\\]|__")


def normalize(text: str) -> str:
    """Search/lookup key: ``"Looking At"``, ``"looking_at"``, ``" looking  at "`` -> ``"looking_at"``.

    NFKC (full-width forms), escaped parentheses ``\\(`` ``\\)`` -> ``(`` ``)``, case-folded,
    surrounding whitespace stripped, every run of spaces/underscores -> one ``_``.
    """
    if text.isascii():  # fast path: ~99.9% of tag names and aliases
        low = text.lower()
        if _ASCII_NEEDS_WORK.search(low) is None:
            return text if low == text else low
        low = low.replace("\\(", "(").replace("\\)", ")").strip()
        return _WS_RUN.sub("_", low)
    out = unicodedata.normalize("NFKC", text).replace("\\(", "(").replace("\\)", ")")
    return _WS_RUN.sub("_", out.casefold().strip())
