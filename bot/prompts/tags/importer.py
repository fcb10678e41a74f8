"""Tag CSV import: parse the a1111 tag-autocomplete CSV and write it into the tag database.

Source format, one tag per line, no header::

    name,category,post_count,"alias1,alias2"

Categories: 0 general, 1 artist, 3 copyright (series), 4 character, 5 meta. Names are underscored
(``looking_at_viewer``), may contain parentheses (``firefly_(honkai:_star_rail)``); the alias field
is quoted, comma-separated and may be empty (a missing fourth field is accepted as "no aliases").

Rows with any other category number (e.g. an e621 list, where 5 means "species") are *skipped and
counted* in ``ImportReport.unknown_category`` rather than filed as general: a wrong category would
misplace the tag in the prompt order, while a missing tag only loses one autocomplete suggestion.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import hashlib
import io
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, NoReturn

from bot.prompts.tags import db
from bot.prompts.tags.model import TagCategory, TagImportError, normalize

# How many problem rows of each kind an ImportReport keeps as examples.
MAX_PROBLEMS = 10
# Sanity cap on the source file (the full Danbooru list is ~3.5 MB).
MAX_CSV_BYTES = 256 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


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




@dataclass
class ParsedRow:
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
    except ValueError:  # a NUL character: no file has such a name
        raise TagImportError(f"tag CSV not found: {csv_path!r} is not a possible file name") from None
    except OSError as exc:
        raise TagImportError(f"cannot read tag CSV {csv_path}: {exc.strerror or exc}") from None
    if data[:2] == GZIP_MAGIC:  # the shipped default set (data/tags/*.csv.gz), or a compressed download
        data = _gunzip(csv_path, data)
    if not data.strip():
        raise TagImportError(f'{csv_path} is empty; expected lines like: 1girl,0,6008644,"1girls,sole_female"')
    if b"\x00" in data[:65536]:
        raise TagImportError(f"{csv_path} is a binary file, not a tag CSV")
    # Undecodable bytes become U+FFFD and only the rows that contain them are rejected.
    return data.decode("utf-8-sig", errors="replace"), hashlib.sha256(data).hexdigest()


def _gunzip(csv_path: Path, data: bytes) -> bytes:
    """The decompressed bytes, at most MAX_CSV_BYTES (a small file must not expand into gigabytes)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_CSV_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise TagImportError(f"{csv_path} is a damaged gzip file ({exc})") from None
    if len(out) > MAX_CSV_BYTES:
        raise TagImportError(f"{csv_path} expands to more than {MAX_CSV_BYTES // 10**6} MB; a tag list is a few MB")
    return out


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
    # Checked as text first: int() refuses over 4,300 digits, and SQLite stores at most 2^63 - 1.
    cat_digits, count_digits = cat_text.lstrip("0") or "0", count_text.lstrip("0") or "0"
    if len(cat_digits) > 3:
        return f"category {_shorten(cat_text)} is not one of 0, 1, 3, 4, 5"
    if len(count_digits) > 19 or int(count_digits) > db.MAX_POST_COUNT:
        return f"post count {_shorten(count_text)} is too large (at most {db.MAX_POST_COUNT:,})"
    if len(row) == 3 or not row[3]:
        return name, int(cat_digits), int(count_digits), []
    aliases = [a.strip() for a in row[3].split(",")]
    return name, int(cat_digits), int(count_digits), [a for a in aliases if a]


def _shorten(text: str, limit: int = 30) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"


def _parse_csv(csv_path: Path) -> tuple[list[ParsedRow], dict[str, int], list[RowProblem], str]:
    text, digest = _read_text(csv_path)
    counts = {"rows": 0, "malformed": 0, "unknown_category": 0, "duplicate": 0}
    problems: list[RowProblem] = []
    by_key: dict[str, ParsedRow] = {}

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
                new = ParsedRow(line, name, category, post_count, aliases)
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


def parse_rows(csv_path: Path) -> list[ParsedRow]:
    """The usable rows of a tag CSV (plain or gzip), duplicates resolved; TagImportError if it is none."""
    return _parse_csv(Path(csv_path))[0]


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
    meta = {
        "source_path": str(csv_path),
        "source_sha256": digest,
        "imported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tag_count": str(len(parsed)),
    }
    n_aliases = db.write_tags(db_path, [(r.name, r.category, r.post_count, r.aliases) for r in parsed], meta)

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
