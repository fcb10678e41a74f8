"""Benchmark bot.prompts.tags over the real Danbooru tag list (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_tags.py [--csv PATH] [--queries N] [--seed S]

The CSV defaults to $ANIMEBOT_DANBOORU_CSV or ../shared/data/danbooru.csv next to the repo. It is
imported into a temporary database that is deleted afterwards; nothing is copied into the project.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from bisect import bisect_left
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bot.prompts.tags.index as tags  # noqa: E402
from bot.prompts.tags import TagCategory, TagDatabase, import_csv  # noqa: E402
from bot.prompts.tags.index import _prefix_end  # noqa: E402


def default_csv() -> Path:
    return Path(os.environ.get("ANIMEBOT_DANBOORU_CSV", REPO.parent / "shared" / "data" / "danbooru.csv"))


def rss_bytes() -> int:
    """Current resident set size (Linux); 0 elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def make_queries(csv_path: Path, n: int, rng: random.Random) -> list[tuple[str, TagCategory | None]]:
    """Realistic autocomplete input: a prefix (1-6 chars) of a real tag name, typed various ways.

    Half the source names are drawn by popularity (people type popular tags more), half uniformly;
    a third of the queries are artist-only searches over artist names.
    """
    names: list[str] = []
    counts: list[int] = []
    artists: list[str] = []
    artist_counts: list[int] = []
    with open(csv_path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if len(row) < 3 or not row[2].isdigit():
                continue
            names.append(row[0])
            counts.append(int(row[2]))
            if row[1] == "1":
                artists.append(row[0])
                artist_counts.append(int(row[2]))
    n_artist = (n + 2) // 3
    sources: list[tuple[str, TagCategory | None]] = []
    for pool, weights, count, category in (
        (artists, artist_counts, n_artist, TagCategory.ARTIST),
        (names, counts, n - n_artist, None),
    ):
        by_popularity = rng.choices(pool, weights=weights, k=count // 2)
        uniform = rng.choices(pool, k=count - count // 2)
        sources.extend((name, category) for name in by_popularity + uniform)
    rng.shuffle(sources)
    queries: list[tuple[str, TagCategory | None]] = []
    for name, category in sources:
        text = name[: rng.randint(1, 6)]
        style = rng.random()
        if style < 0.3:
            text = text.replace("_", " ")  # typed with spaces
        elif style < 0.4:
            text = text.title()  # typed with capitals
        queries.append((text, category))
    return queries


def pct(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(p / 100 * (len(sorted_ms) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=default_csv())
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--threshold", type=int, help=f"override bot.prompts.tags.index.SCAN_THRESHOLD (default {tags.SCAN_THRESHOLD})"
    )
    args = parser.parse_args()
    if args.threshold is not None:
        tags.SCAN_THRESHOLD = args.threshold
    if not args.csv.is_file():
        sys.exit(f"tag CSV not found: {args.csv} (set ANIMEBOT_DANBOORU_CSV or pass --csv)")

    with tempfile.TemporaryDirectory(prefix="bench_tags_") as tmp:
        db_path = Path(tmp) / "tags.db"

        t0 = time.perf_counter()
        report = import_csv(args.csv, db_path)
        import_s = time.perf_counter() - t0
        print(report.summary())
        print(f"import:            {import_s:7.2f} s   (db file {db_path.stat().st_size / 1e6:.1f} MB)")

        # Open timing without tracemalloc (it slows allocation-heavy code several-fold).
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        db = TagDatabase.open(db_path)
        open_s = time.perf_counter() - t0
        gc.collect()
        rss_delta = rss_bytes() - rss0
        print(f"open:              {open_s:7.2f} s   ({len(db):,} tags)")
        print(f"RSS delta on open: {rss_delta / 1e6:7.1f} MB")
        print(f"memory_bytes():    {db.memory_bytes() / 1e6:7.1f} MB   (deep getsizeof of the index + Tags)")

        del db
        gc.collect()
        tracemalloc.start()
        db = TagDatabase.open(db_path)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"tracemalloc:       {current / 1e6:7.1f} MB retained, {peak / 1e6:.1f} MB peak during open")

    rng = random.Random(args.seed)
    queries = make_queries(args.csv, args.queries, rng)
    for text, category in queries[:500]:  # warm-up
        db.search(text, category)

    # Wall time is what a user waits for; thread CPU time shows our own cost when other processes
    # compete for the two cores (wall - cpu = time we were preempted).
    gc_runs = [0, 0, 0]

    def count_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_runs[info["generation"]] += 1

    gc.callbacks.append(count_gc)
    timings: list[tuple[float, str, TagCategory | None, int]] = []
    cpu_ms: list[float] = []
    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    for text, category in queries:
        c, t = cpu(), perf()
        results = db.search(text, category)
        t, c = perf() - t, cpu() - c
        timings.append((t / 1e6, text, category, len(results)))
        cpu_ms.append(c / 1e6)
    gc.callbacks.remove(count_gc)
    cpu_ms.sort()

    ms = sorted(t[0] for t in timings)
    print(f"\n{len(ms):,} searches (1-6 chars, ~30% typed with spaces, 1/3 artist-only), limit 25:")
    print(
        f"  p50 {pct(ms, 50):.3f} ms   p95 {pct(ms, 95):.3f} ms   p99 {pct(ms, 99):.3f} ms   "
        f"max {ms[-1]:.3f} ms   mean {statistics.fmean(ms):.3f} ms"
    )
    for label, subset in (
        ("all categories", [t for t in timings if t[2] is None]),
        ("artist-only", [t for t in timings if t[2] is TagCategory.ARTIST]),
    ):
        sub = sorted(t[0] for t in subset)
        print(f"  {label:15s} n={len(sub):5d}  p50 {pct(sub, 50):.3f}  p99 {pct(sub, 99):.3f}  max {sub[-1]:.3f} ms")
    print(
        f"  thread CPU time: p50 {pct(cpu_ms, 50):.3f}  p95 {pct(cpu_ms, 95):.3f}  "
        f"p99 {pct(cpu_ms, 99):.3f}  max {cpu_ms[-1]:.3f} ms"
    )
    print(f"  gc collections during the run (gen0/1/2): {gc_runs}; load average {os.getloadavg()[0]:.2f}")
    print("  slowest (wall):")
    for elapsed, text, category, n in sorted(timings, key=lambda t: t[0], reverse=True)[:5]:
        cat = category.name.lower() if category is not None else "any"
        print(f"    {elapsed:7.3f} ms  {text!r:12s} [{cat}] -> {n} results")

    # Worst case by construction: the prefixes with the longest key ranges that are *not*
    # precomputed, i.e. scanned on every query (at most SCAN_THRESHOLD keys each).
    index = db.index()._all
    candidates: set[str] = set()
    for key in index.keys[::20]:
        candidates.update(key[:n] for n in range(1, min(len(key), 8) + 1))
    sized = []
    for prefix in candidates - index.top.keys():
        lo = bisect_left(index.keys, prefix)
        sized.append((_prefix_end(index.keys, prefix, lo, len(index.keys)) - lo, prefix))
    worst = sorted(sized, reverse=True)[:300]
    worst_ms = []
    for _size, prefix in worst:
        c = cpu()
        db.search(prefix)
        worst_ms.append((cpu() - c) / 1e6)
    worst_ms.sort()
    print(
        f"\nworst-case scans: {len(worst)} largest non-precomputed prefixes "
        f"({worst[-1][0]}-{worst[0][0]} keys, threshold {tags.SCAN_THRESHOLD}), CPU ms: "
        f"p50 {pct(worst_ms, 50):.3f}  p99 {pct(worst_ms, 99):.3f}  max {worst_ms[-1]:.3f} ms"
    )

    names = [k for k in index.keys[:: max(1, len(index.keys) // 2000)] if k]
    t0 = time.perf_counter()
    found = db.lookup(names)
    lookup_us = (time.perf_counter() - t0) / len(names) * 1e6
    print(f"lookup(): {len(names):,} names in one call, {lookup_us:.1f} us per name, {len(found):,} found")

    empty = []
    for category in (None, *TagCategory):
        t0 = time.perf_counter_ns()
        db.search("", category)
        empty.append((time.perf_counter_ns() - t0) / 1e6)
    print(f"empty-text searches (top of each category): max {max(empty):.3f} ms")


if __name__ == "__main__":
    main()
