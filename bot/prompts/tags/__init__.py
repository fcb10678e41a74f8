"""Danbooru tag list: CSV import into SQLite and a fast in-memory search (pure, synchronous).

- ``model``: Tag, TagCategory, TagMatch, the errors and ``normalize`` (the search key);
- ``importer``: parse the a1111 tag-autocomplete CSV (``import_csv``);
- ``db``: the SQLite file: schema, write, load, lookup by key, and what a failure means;
- ``index``: ``TagDatabase`` (opened now or lazily) and ``TagIndex``: prefix search filled up with
  similar tags, and lookup;
- ``kana``: kana -> romaji and the spelling-insensitive key of the sounds-alike search;
- ``fuzzy``: the bigram index and edit distance of the typo-tolerant search.
"""

from __future__ import annotations

from bot.prompts.tags.db import SCHEMA_VERSION
from bot.prompts.tags.importer import ImportReport, RowProblem, import_csv
from bot.prompts.tags.index import MAX_LIMIT, TagDatabase
from bot.prompts.tags.model import (
    Tag,
    TagCategory,
    TagDatabaseBusy,
    TagDatabaseError,
    TagImportError,
    TagMatch,
    normalize,
)

__all__ = [
    "MAX_LIMIT",
    "SCHEMA_VERSION",
    "ImportReport",
    "RowProblem",
    "Tag",
    "TagCategory",
    "TagDatabase",
    "TagDatabaseBusy",
    "TagDatabaseError",
    "TagImportError",
    "TagMatch",
    "import_csv",
    "normalize",
]
