"""Danbooru tag list: CSV import into SQLite and a fast in-memory prefix search (pure, synchronous).

Source format (the a1111 tag-autocomplete CSV), one tag per line, no header::

    name,category,post_count,"alias1,alias2"

Categories: 0 general, 1 artist, 3 copyright (series), 4 character, 5 meta. Names are underscored
(``looking_at_viewer``), may contain parentheses (``firefly_(honkai:_star_rail)``); the alias field
is quoted, comma-separated and may be empty (a missing fourth field is accepted as "no aliases").

Rows with any other category number (e.g. an e621 list, where 5 means "species") are *skipped and
counted* in ``ImportReport.unknown_category`` rather than filed as general: a wrong category would
misplace the tag in the prompt order, while a missing tag only loses one autocomplete suggestion.

``TagDatabase`` is immutable once opened, so one instance can be shared by threads and coroutines.
``search`` costs well under a millisecond and may run on the event loop; ``open`` takes 1-2 s and
~29 MB for the full 140k-tag list, so call it once, from a worker thread (``asyncio.to_thread``).

Index design (see ``_PrefixIndex``): every normalized name and alias is a key; keys are kept sorted
with a parallel array of tag *ranks* (0 = most posts). A prefix is a contiguous key range found by
two bisects; the best tags of a range are its smallest distinct ranks. Prefixes with more than
``SCAN_THRESHOLD`` keys (short ones like "", "a", "sa") get their answer precomputed at open, so no
query ever sorts more than ``SCAN_THRESHOLD`` ranks. There is one index over all tags and
one per category, so "artists starting with s" is as cheap as any other query.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import re
import sqlite3
import sys
import time
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import compress
from pathlib import Path
from typing import NamedTuple, NoReturn

__all__ = [
    "MAX_LIMIT",
    "SCHEMA_VERSION",
    "ImportReport",
    "RowProblem",
    "Tag",
    "TagCategory",
    "TagDatabase",
    "TagDatabaseError",
    "TagImportError",
    "TagMatch",
    "import_csv",
    "normalize",
]

# Bump whenever the tables change: an older database is then refused with a "re-import" message.
# (Search keys are normalized at open, not stored, so changing ``normalize`` needs no re-import.)
SCHEMA_VERSION = 1
# Discord autocomplete shows at most 25 choices.
MAX_LIMIT = 25
# Key ranges longer than this get a precomputed top list; shorter ones are scanned per query.
SCAN_THRESHOLD = 128
# How many problem rows of each kind an ImportReport keeps as examples.
MAX_PROBLEMS = 10
# Sanity cap on the source file (the full Danbooru list is ~3.5 MB).
MAX_CSV_BYTES = 256 * 1024 * 1024


class TagImportError(Exception):
    """The tag CSV (or the tag database) cannot be used; the message says why, for a human."""


class TagDatabaseError(TagImportError):
    """The tag database is missing, not ours, corrupt or from another schema version.

    A subclass of ``TagImportError`` so ``except TagImportError`` covers both import and open.
    """


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


class RowProblem(NamedTuple):
    line: int  # 1-based physical line number in the CSV
    kind: str  # "malformed", "unknown_category" or "duplicate"
    reason: str


@dataclass(frozen=True)
class ImportReport:
    csv_path: Path
    db_path: Path
    tags: int  # tags written
    aliases: int  # aliases written (after dropping empty / duplicate / same-as-name ones)
    by_category: Mapping[TagCategory, int]
    rows: int  # non-blank rows read
    malformed: int  # rows skipped because they could not be parsed
    unknown_category: int  # well-formed rows skipped because the category is not 0/1/3/4/5
    duplicates: int  # rows whose (normalized) name was already seen; the higher post count is kept
    problems: tuple[RowProblem, ...]  # the first few skipped rows of each kind, by line
    seconds: float

    @property
    def skipped(self) -> int:
        return self.malformed + self.unknown_category + self.duplicates

    @property
    def malformed_lines(self) -> tuple[int, ...]:
        """Line numbers of the first few malformed rows."""
        return tuple(p.line for p in self.problems if p.kind == "malformed")

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        """A few human-readable lines for a CLI or a log."""
        cats = ", ".join(f"{c.name.lower()} {n:,}" for c, n in sorted(self.by_category.items()))
        lines = [
            f"imported {self.tags:,} tags ({cats}) with {self.aliases:,} aliases "
            f"from {self.csv_path} into {self.db_path} in {self.seconds:.2f} s",
        ]
        if self.skipped:
            lines.append(
                f"skipped {self.skipped:,} of {self.rows:,} rows: {self.malformed:,} malformed, "
                f"{self.unknown_category:,} unknown category, {self.duplicates:,} duplicate"
            )
            lines.extend(f"  line {p.line}: {p.reason}" for p in self.problems)
            if self.skipped > len(self.problems):
                lines.append(f"  ... and {self.skipped - len(self.problems):,} more")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# normalization

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


# ---------------------------------------------------------------------------------------------
# CSV import

_SCHEMA = """
CREATE TABLE tag_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE tags (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    category   INTEGER NOT NULL CHECK (category IN (0, 1, 3, 4, 5)),
    post_count INTEGER NOT NULL CHECK (post_count >= 0)
);  -- plus UNIQUE INDEX tags_by_name (name), created after the bulk insert
CREATE TABLE tag_aliases (
    tag_id   INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    alias    TEXT NOT NULL,
    PRIMARY KEY (tag_id, position)
) WITHOUT ROWID;
"""
_TABLES = ("tag_aliases", "tags", "tag_meta")


@dataclass
class _ParsedRow:
    line: int
    name: str
    category: TagCategory
    post_count: int
    aliases: list[str] = field(default_factory=list)


def _read_text(csv_path: Path) -> tuple[str, str]:
    """(decoded text, sha256 of the bytes)."""
    try:
        size = csv_path.stat().st_size
        if not csv_path.is_file():
            raise TagImportError(f"{csv_path} is not a file")
        if size > MAX_CSV_BYTES:
            raise TagImportError(
                f"{csv_path} is {size / 1e6:.0f} MB; a tag list is a few MB (limit {MAX_CSV_BYTES // 10**6} MB)"
            )
        data = csv_path.read_bytes()
    except FileNotFoundError:
        raise TagImportError(f"tag CSV not found: {csv_path}") from None
    except OSError as exc:
        raise TagImportError(f"cannot read tag CSV {csv_path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TagImportError(f'{csv_path} is empty; expected lines like: 1girl,0,6008644,"1girls,sole_female"')
    if b"\x00" in data[:65536]:
        raise TagImportError(f"{csv_path} is a binary file, not a tag CSV")
    # Undecodable bytes become U+FFFD and only the rows that contain them are rejected.
    return data.decode("utf-8-sig", errors="replace"), hashlib.sha256(data).hexdigest()


def _parse_row(row: list[str], check_utf8: bool) -> tuple[str, int, int, list[str]] | str:
    """(name, category number, post_count, aliases) or the reason the row is malformed."""
    if len(row) not in (3, 4):
        return f'expected 4 fields name,category,post_count,"aliases" but found {len(row)}'
    if check_utf8 and any("\ufffd" in f for f in row):
        return "not valid UTF-8"
    name = "_".join(row[0].split())
    if not name:
        return "empty tag name"
    cat_text, count_text = row[1].strip(), row[2].strip()
    if not (cat_text.isascii() and cat_text.isdigit()):
        return f"category {row[1]!r} is not a number"
    if not (count_text.isascii() and count_text.isdigit()):
        return f"post count {row[2]!r} is not a non-negative integer"
    if len(row) == 3 or not row[3]:
        return name, int(cat_text), int(count_text), []
    aliases = [a.strip() for a in row[3].split(",")]
    return name, int(cat_text), int(count_text), [a for a in aliases if a]


def _parse_csv(csv_path: Path) -> tuple[list[_ParsedRow], dict[str, int], list[RowProblem], str]:
    text, digest = _read_text(csv_path)
    counts = {"rows": 0, "malformed": 0, "unknown_category": 0, "duplicate": 0}
    problems: list[RowProblem] = []
    by_key: dict[str, _ParsedRow] = {}

    def problem(kind: str, line: int, reason: str) -> None:
        counts[kind] += 1
        if counts[kind] <= MAX_PROBLEMS:
            problems.append(RowProblem(line, kind, reason))

    categories = {int(c): c for c in TagCategory}
    check_utf8 = "\ufffd" in text  # only then look for undecodable bytes row by row
    # One physical line is one row (the format has no multi-line fields), so a stray quote can only
    # spoil its own line instead of swallowing the rest of the file as one quoted field.
    for line, raw in enumerate(io.StringIO(text, newline=None), 1):
        raw = raw.rstrip("\n")
        if not raw.strip():
            continue  # blank line
        counts["rows"] += 1
        if '"' in raw:
            try:
                row = next(csv.reader((raw,)))
            except csv.Error as exc:  # e.g. a field beyond csv.field_size_limit()
                problem("malformed", line, f"unreadable CSV: {exc}")
                continue
        else:
            row = raw.split(",")  # the common case, and much faster than the csv module
        parsed = _parse_row(row, check_utf8)
        if isinstance(parsed, str):
            problem("malformed", line, parsed)
        else:
            name, cat_num, post_count, raw_aliases = parsed
            category = categories.get(cat_num)
            if category is None:
                problem("unknown_category", line, f"unknown category {cat_num} for {name!r}")
            else:
                key = normalize(name)
                seen = {key}
                aliases: list[str] = []
                for alias in raw_aliases:
                    akey = normalize(alias)
                    if akey and akey not in seen:
                        seen.add(akey)
                        aliases.append(alias)
                new = _ParsedRow(line, name, category, post_count, aliases)
                old = by_key.get(key)
                if old is None:
                    by_key[key] = new
                else:
                    kept = old if old.post_count >= new.post_count else new
                    dropped = new if kept is old else old
                    by_key[key] = kept
                    problem(
                        "duplicate",
                        dropped.line,
                        f"duplicate of line {kept.line} ({kept.name!r}); kept the one with more posts",
                    )
        # Give up early on something that is clearly not a tag list.
        if counts["rows"] == 200 and not by_key:
            _raise_not_a_tag_csv(csv_path, problems)

    if not by_key:
        _raise_not_a_tag_csv(csv_path, problems)
    if counts["malformed"] > len(by_key):
        _raise_not_a_tag_csv(csv_path, problems, f"{counts['malformed']:,} of {counts['rows']:,} rows malformed")
    return list(by_key.values()), counts, problems, digest


def _raise_not_a_tag_csv(csv_path: Path, problems: list[RowProblem], detail: str = "") -> NoReturn:
    first = f"; line {problems[0].line}: {problems[0].reason}" if problems else ""
    head = f" ({detail})" if detail else ""
    raise TagImportError(
        f"{csv_path} does not look like a tag-autocomplete CSV{head}{first}. "
        'Expected lines like: 1girl,0,6008644,"1girls,sole_female" (name,category,post_count,"aliases")'
    )


def import_csv(csv_path: Path, db_path: Path) -> ImportReport:
    """Parse the tag CSV and replace the tag tables of ``db_path`` (created if missing) with it.

    The whole replacement is one SQLite transaction: readers see the old list or the new one,
    never a mix, and any failure leaves the previous content intact. The CSV is fully parsed
    before the database is touched. Raises ``TagImportError`` (never a traceback for bad input).
    """
    started = time.perf_counter()
    csv_path, db_path = Path(csv_path), Path(db_path)
    parsed, counts, problems, digest = _parse_csv(csv_path)
    # Rank order (most posts first) so that ids follow popularity; ties by name for determinism.
    parsed.sort(key=lambda r: (-r.post_count, r.name))

    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TagImportError(f"cannot create the folder for {db_path}: {exc.strerror or exc}") from None
    if db_path.exists() and not db_path.is_file():
        raise TagImportError(f"{db_path} exists and is not a file")

    n_aliases = 0
    try:
        conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise TagImportError(f"cannot open tag database {db_path}: {exc}") from None
    try:
        try:
            conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise TagImportError(
                f"{db_path} exists but is not a usable SQLite database ({exc}); refusing to overwrite it"
            ) from None
        conn.execute("PRAGMA cache_size = -65536")  # 64 MB: the whole list fits, no spilling
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)  # not executescript(): that would COMMIT first
            conn.executemany(
                "INSERT INTO tags (id, name, category, post_count) VALUES (?, ?, ?, ?)",
                ((i, r.name, int(r.category), r.post_count) for i, r in enumerate(parsed, 1)),
            )
            # Built after the bulk insert: about twice as fast as maintaining it row by row.
            conn.execute("CREATE UNIQUE INDEX tags_by_name ON tags (name)")
            alias_rows = [(i, pos, a) for i, r in enumerate(parsed, 1) for pos, a in enumerate(r.aliases)]
            n_aliases = len(alias_rows)
            conn.executemany("INSERT INTO tag_aliases (tag_id, position, alias) VALUES (?, ?, ?)", alias_rows)
            meta = {
                "schema_version": str(SCHEMA_VERSION),
                "source_path": str(csv_path),
                "source_sha256": digest,
                "imported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "tag_count": str(len(parsed)),
                "alias_count": str(n_aliases),
            }
            conn.executemany("INSERT INTO tag_meta (key, value) VALUES (?, ?)", meta.items())
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise TagImportError(f"writing tag database {db_path} failed: {exc}") from None
    finally:
        conn.close()

    by_category = {c: 0 for c in TagCategory}
    for r in parsed:
        by_category[r.category] += 1
    return ImportReport(
        csv_path=csv_path,
        db_path=db_path,
        tags=len(parsed),
        aliases=n_aliases,
        by_category=by_category,
        rows=counts["rows"],
        malformed=counts["malformed"],
        unknown_category=counts["unknown_category"],
        duplicates=counts["duplicate"],
        problems=tuple(sorted(problems)),
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------
# in-memory index


def _prefix_end(keys: list[str], prefix: str, lo: int, hi: int) -> int:
    """First index in keys[lo:hi] whose key does not start with ``prefix`` (keys sorted, >= prefix)."""
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return hi
    return bisect_left(keys, stem[:-1] + chr(ord(stem[-1]) + 1), lo, hi)


def _smallest_distinct(values: Iterable[int], limit: int) -> list[int]:
    """The ``limit`` smallest distinct values (a tag can own several keys of one range)."""
    return sorted(set(values))[:limit]


class _PrefixIndex:
    """Sorted keys + parallel ranks, and ready-made results for every prefix whose key range is
    longer than ``SCAN_THRESHOLD`` (filled in by ``TagDatabase._build``)."""

    __slots__ = ("keys", "ranks", "top")

    def __init__(self, keys: list[str], ranks: array[int]) -> None:
        self.keys = keys
        self.ranks = ranks
        self.top: dict[str, tuple[TagMatch, ...]] = {}

    def big_prefixes(self) -> dict[str, list[int]]:
        """{prefix: its best MAX_LIMIT ranks} for each prefix with more than SCAN_THRESHOLD keys.

        Bottom-up: a prefix's best tags are among the keys equal to it and its children's best
        tags, so each key is sorted once (in the small range that holds it), not once per level.
        """
        keys, ranks = self.keys, self.ranks
        big: dict[str, list[int]] = {}

        def best(prefix: str, lo: int, hi: int) -> list[int]:
            if hi - lo <= SCAN_THRESHOLD:
                return _smallest_distinct(ranks[lo:hi], MAX_LIMIT)
            depth = len(prefix)
            i = lo
            while i < hi and len(keys[i]) == depth:  # keys equal to the prefix sort first
                i += 1
            candidates = list(ranks[lo:i])
            while i < hi:
                child = prefix + keys[i][depth]
                j = _prefix_end(keys, child, i, hi)
                candidates += best(child, i, j)
                i = j
            big[prefix] = top = _smallest_distinct(candidates, MAX_LIMIT)
            return top

        best("", 0, len(keys))
        return big

    def scan(self, prefix: str, limit: int) -> list[int]:
        """Best ``limit`` ranks for a prefix that is not in ``top`` (<= SCAN_THRESHOLD keys)."""
        keys = self.keys
        lo = bisect_left(keys, prefix)
        hi = _prefix_end(keys, prefix, lo, len(keys))
        return _smallest_distinct(self.ranks[lo:hi], limit) if lo < hi else []


class TagDatabase:
    """Read-only tag list with prefix search and exact lookup; build with ``TagDatabase.open``."""

    def __init__(
        self,
        tags: list[Tag],
        norm_names: list[str],
        all_index: _PrefixIndex,
        by_category: dict[TagCategory, _PrefixIndex],
        meta: dict[str, str],
    ) -> None:
        self._tags = tags  # by rank: 0 = most posts
        self._norm_names = norm_names  # by rank
        self._all = all_index
        self._by_category = by_category
        self.meta = meta
        self._memory: int | None = None
        # Precomputed answers for short prefixes, as shared immutable TagMatch objects.
        by_name: dict[int, TagMatch] = {}
        for index in (all_index, *by_category.values()):
            for prefix, ranks in index.big_prefixes().items():
                matches = []
                for rank in ranks:
                    if norm_names[rank].startswith(prefix):
                        match = by_name.get(rank)
                        if match is None:
                            match = by_name[rank] = TagMatch(tags[rank])
                    else:
                        match = self._match(rank, prefix)
                    matches.append(match)
                index.top[prefix] = tuple(matches)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def open(cls, db_path: Path) -> TagDatabase:
        """Load the tags written by ``import_csv`` and build the search index (1-2 s for 140k tags)."""
        tags, meta = _load(Path(db_path))
        return cls._build(tags, meta)

    @classmethod
    def _build(cls, tags: list[Tag], meta: dict[str, str]) -> TagDatabase:
        # ``tags`` is in rank order. Entries are listed names first, then aliases, each in rank order,
        # so after a *stable* sort by key, equal keys are ordered (name before alias, more posts first):
        # the first entry of an equal run is the lookup winner.
        norm_names = [normalize(t.name) for t in tags]
        entry_keys = list(norm_names)
        entry_ranks = array("i", range(len(tags)))
        for rank, tag in enumerate(tags):
            for alias in tag.aliases:
                entry_keys.append(normalize(alias))
                entry_ranks.append(rank)
        order = sorted(range(len(entry_keys)), key=entry_keys.__getitem__)
        keys = [entry_keys[i] for i in order]
        ranks = array("i", [entry_ranks[i] for i in order])

        # Per-category indexes keep the global key order; the split runs in C via 0/1 byte masks.
        cat_of_rank = bytes(int(t.category) for t in tags)
        entry_cats = bytes(map(cat_of_rank.__getitem__, ranks))
        by_category = {}
        for c in TagCategory:
            mask = entry_cats.translate(bytes(int(i == c) for i in range(256)))
            by_category[c] = _PrefixIndex(list(compress(keys, mask)), array("i", compress(ranks, mask)))
        return cls(tags, norm_names, _PrefixIndex(keys, ranks), by_category, meta)

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tags)

    def search(self, text: str, category: TagCategory | None = None, limit: int = MAX_LIMIT) -> list[TagMatch]:
        """Tags whose name or an alias starts with ``text`` (normalized), most posts first.

        Each tag appears once; ``matched_alias`` is None when the name matched, otherwise the first
        alias that did. Empty text gives the most-used tags (of ``category``). At most
        ``min(limit, 25)`` results.
        """
        limit = min(limit, MAX_LIMIT)
        if limit <= 0:
            return []
        if category is None:
            index = self._all
        else:
            try:
                index = self._by_category[category]
            except KeyError:
                raise ValueError(f"unknown tag category {category!r}") from None
        prefix = normalize(text)
        top = index.top.get(prefix)
        if top is not None:
            return list(top[:limit])
        return [self._match(rank, prefix) for rank in index.scan(prefix, limit)]

    def _match(self, rank: int, prefix: str) -> TagMatch:
        tag = self._tags[rank]
        if self._norm_names[rank].startswith(prefix):
            return TagMatch(tag)
        for alias in tag.aliases:
            if normalize(alias).startswith(prefix):
                return TagMatch(tag, alias)
        return TagMatch(tag)  # unreachable: the rank came from one of these keys

    def lookup(self, names: Iterable[str]) -> dict[str, Tag]:
        """Exact (normalized) name-or-alias match: ``{input as given: canonical Tag}``.

        Unknown inputs are left out. A name beats an alias; between aliases, more posts wins.
        """
        if isinstance(names, str):
            raise TypeError("lookup() takes an iterable of tag strings, not a single string")
        keys, ranks, tags = self._all.keys, self._all.ranks, self._tags
        found: dict[str, Tag] = {}
        for name in names:
            key = normalize(name)
            if not key:
                continue
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                found[name] = tags[ranks[i]]
        return found

    def get(self, name: str) -> Tag | None:
        """``lookup`` for one string."""
        return self.lookup((name,)).get(name)

    def memory_bytes(self) -> int:
        """Estimated bytes held by the index and the Tag objects (deep ``sys.getsizeof``, shared
        objects counted once). Computed on first call (~1 s for 140k tags), then cached."""
        if self._memory is None:
            self._memory = _deep_size([self._tags, self._norm_names, self._all, *self._by_category.values()])
        return self._memory


def _deep_size(roots: list[object]) -> int:
    seen: set[int] = set()
    total = 0
    stack: list[object] = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or (isinstance(obj, int) and -5 <= obj <= 256):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (Tag, TagMatch)):
            stack.extend(getattr(obj, f) for f in obj.__slots__)
        elif isinstance(obj, _PrefixIndex):
            stack.extend((obj.keys, obj.ranks, obj.top))
    return total


def _load(db_path: Path) -> tuple[list[Tag], dict[str, str]]:
    hint = "run the tag import (import_csv) to create it"
    if not db_path.is_file():
        raise TagDatabaseError(f"tag database not found: {db_path}; {hint}")
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise TagDatabaseError(f"cannot open tag database {db_path}: {exc}") from None
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise TagDatabaseError(f"{db_path} is not a SQLite database ({exc}); {hint}") from None
        if not set(_TABLES) <= have:
            raise TagDatabaseError(f"{db_path} holds no tag list; {hint}")
        if version != SCHEMA_VERSION:
            raise TagDatabaseError(
                f"{db_path} has tag schema version {version}, this code needs {SCHEMA_VERSION}; re-import the tag CSV"
            )
        try:
            meta = dict(conn.execute("SELECT key, value FROM tag_meta"))
            aliases: dict[int, list[str]] = {}
            alias_rows = conn.execute("SELECT tag_id, alias FROM tag_aliases ORDER BY tag_id, position")
            for tag_id, alias in alias_rows:
                aliases.setdefault(tag_id, []).append(alias)
            categories = {int(c): c for c in TagCategory}
            tags = [
                Tag(name, categories[cat], count, tuple(aliases.get(tag_id, ())))
                for tag_id, name, cat, count in conn.execute(
                    "SELECT id, name, category, post_count FROM tags ORDER BY post_count DESC, name"
                )
            ]
        except (sqlite3.Error, KeyError, TypeError) as exc:
            raise TagDatabaseError(f"tag database {db_path} is corrupt ({exc!r}); re-import the CSV") from None
    finally:
        conn.close()
    return tags, meta
