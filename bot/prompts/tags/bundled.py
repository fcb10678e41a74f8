"""The default tag set shipped in data/tags/: how it is built from a full list, and its import on first start.

``build_default`` picks the most-used tags of each category (by post count) from a tag-autocomplete CSV
and writes them, aliases included, as a gzip-compressed CSV in the same format. The output depends only
on the input and the counts (sorted rows, gzip header without a time stamp), so the shipped file can be
rebuilt and compared byte for byte: ``animebot tags build-default SRC OUT``.

``ensure_tag_database`` imports the shipped file when no tag database exists yet, so autocomplete works
from the first start. It is synchronous (about a second): callers on an event loop run it in a thread.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bot.prompts.dialects import DATA_DIR
from bot.prompts.tags.importer import ImportReport, import_csv, parse_rows
from bot.prompts.tags.model import TagCategory, TagImportError

log = logging.getLogger(__name__)

DEFAULT_TAGS_FILE = DATA_DIR / "tags" / "danbooru-top.csv.gz"
# The counts the shipped file was built with (data/tags/README.md gives the exact command).
DEFAULT_COUNTS: Mapping[TagCategory, int] = {
    TagCategory.GENERAL: 20_000,
    TagCategory.ARTIST: 20_000,
    TagCategory.CHARACTER: 15_000,
    TagCategory.COPYRIGHT: 3_000,
    TagCategory.META: 400,
}


@dataclass(frozen=True)
class BuildReport:
    source: Path
    out: Path
    by_category: Mapping[TagCategory, int]
    aliases: int
    bytes_written: int

    def summary(self) -> str:
        cats = ", ".join(f"{c.name.lower()} {n:,}" for c, n in sorted(self.by_category.items()))
        total = sum(self.by_category.values())
        return (
            f"wrote {total:,} tags ({cats}) with {self.aliases:,} aliases from {self.source} "
            f"to {self.out} ({self.bytes_written / 1e6:.2f} MB)"
        )


def build_default(source: Path, out: Path, counts: Mapping[TagCategory, int]) -> BuildReport:
    """Write the ``counts[category]`` most-used tags of each category of ``source`` (a tag CSV) to
    ``out``, gzip-compressed, most posts first. Atomic: ``out`` appears complete or not at all."""
    rows = parse_rows(Path(source))
    picked: list[tuple[str, TagCategory, int, tuple[str, ...]]] = []
    by_category: dict[TagCategory, int] = {}
    for category, limit in counts.items():
        best = sorted((r for r in rows if r.category == category), key=lambda r: (-r.post_count, r.name))[:limit]
        by_category[category] = len(best)
        picked.extend((r.name, r.category, r.post_count, tuple(r.aliases)) for r in best)
    picked.sort(key=lambda r: (-r[2], r[0]))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for name, category, post_count, aliases in picked:
        writer.writerow([name, int(category), post_count, ",".join(aliases)])
    data = gzip.compress(text.getvalue().encode("utf-8"), compresslevel=9, mtime=0)
    out = Path(out)
    part = out.with_name(out.name + ".part")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(data)
        part.replace(out)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise TagImportError(f"cannot write {out}: {exc.strerror or exc}") from None
    n_aliases = sum(len(r[3]) for r in picked)
    return BuildReport(Path(source), out, by_category, n_aliases, len(data))


def ensure_tag_database(db_path: Path, default_file: Path = DEFAULT_TAGS_FILE) -> ImportReport | None:
    """Import the shipped default tag set into ``db_path`` if no file is there; None if one was.

    An existing file is never touched (a full list imported by the admin, or a broken file that the
    opening reports). A missing shipped file (a trimmed installation) or a failed import (a full disk)
    is logged and skipped, leaving no file behind: the bot then starts without autocomplete, as before.
    """
    if db_path.exists():
        return None
    if not default_file.is_file():
        log.warning("no tag database at %s and no default tag set at %s: no autocomplete", db_path, default_file)
        return None
    # Into a side file first, renamed at the end: a crash midway never leaves a half-written database
    # that the next start would take for a real one.
    part = db_path.with_name(db_path.name + ".first-start")
    part.unlink(missing_ok=True)
    try:
        report = import_csv(default_file, part)
        part.replace(db_path)
    except (TagImportError, OSError) as exc:
        log.warning("first start: the default tag set was not imported (%s); no autocomplete until "
                    "`animebot tags update`", exc)
        return None
    finally:
        part.unlink(missing_ok=True)
    report = replace(report, db_path=db_path)
    log.info("first start: %s", report.summary().splitlines()[0])
    return report
