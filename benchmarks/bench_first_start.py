"""First start: how big the shipped default tag set is, how long its import and the index build take.

    PYTHONPATH=$PWD python benchmarks/bench_first_start.py

Prints figures; asserts nothing (speed is measured by hand, never in tests).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bot.prompts.tags import TagCategory, TagDatabase
from bot.prompts.tags.bundled import DEFAULT_TAGS_FILE, ensure_tag_database


def main() -> None:
    print(f"{DEFAULT_TAGS_FILE}: {DEFAULT_TAGS_FILE.stat().st_size / 1e6:.2f} MB compressed")
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "tags.sqlite"
        started = time.perf_counter()
        report = ensure_tag_database(db_path)
        imported = time.perf_counter()
        db = TagDatabase.open(db_path)
        opened = time.perf_counter()
        assert report is not None
        print(report.summary().splitlines()[0])
        print(f"import {imported - started:.2f} s, database {db_path.stat().st_size / 1e6:.1f} MB; "
              f"index build (TagDatabase.open) {opened - imported:.2f} s, {db.memory_bytes() / 1e6:.0f} MB")
        started = time.perf_counter()
        for text in ("a", "wl", "hatsune", "ebi", "zz"):
            db.search(text, TagCategory.ARTIST)
        print(f"5 artist searches: {(time.perf_counter() - started) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
