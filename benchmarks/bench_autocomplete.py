"""How often artist/character autocomplete offers the tag a user meant, and how fast (run by hand; prints figures).

    python benchmarks/bench_autocomplete.py [--csv PATH] [--seed S] [--bundled-only]

Query set, built from the tag list (the popular names people actually type) and by hand:

- typos: one deletion, insertion, substitution or transposition (not in the first letter) in one of the
  300 most-used artist or character names, typed whole or cut after 60-100% of it, sometimes with spaces;
- partial: a later word of a multi-word popular name (``miku`` -> ``hatsune_miku``), whole or its first
  4+ letters;
- Japanese: kana readings of popular characters and artists, written by hand below (``JAPANESE``), and
  a few kanji names (not converted: see bot/prompts/tags/kana.py);
- plain: 1-6 typed letters of real names (benchmarks/bench_tags.py's generator), for the latency of the
  ordinary case.

For each group: the share whose intended tag is among the 25 choices, before (prefix search only:
``similar=False``, what autocomplete did until now) and after; then search latency (wall time per
``TagDatabase.search``, as autocomplete calls it: one category, limit 25). Run on the full list
(``--csv``, default ../shared/data/danbooru.csv) and on the bundled default set
(data/tags/danbooru-top.csv.gz). Asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_tags import default_csv, make_queries, rss_bytes  # noqa: E402  (benchmarks/)
from measure import percentile  # noqa: E402  (benchmarks/measure.py)

from bot.prompts.tags import TagCategory, TagDatabase, import_csv  # noqa: E402
from bot.prompts.tags.bundled import DEFAULT_TAGS_FILE  # noqa: E402
from bot.prompts.tags.index import _deep_size  # noqa: E402

A, C = TagCategory.ARTIST, TagCategory.CHARACTER

# (typed, intended tag, category): kana as a Japanese user would type the name (hiragana mostly, some katakana).
JAPANESE: list[tuple[str, str, TagCategory]] = [
    ("はつねみく", "hatsune_miku", C),
    ("ハツネミク", "hatsune_miku", C),
    ("ハツネ", "hatsune_miku", C),
    ("みく", "hatsune_miku", C),
    ("しらかみふぶき", "shirakami_fubuki", C),
    ("ふぶき", "shirakami_fubuki", C),
    ("はくれいれいむ", "hakurei_reimu", C),
    ("れいむ", "hakurei_reimu", C),
    ("きりさめまりさ", "kirisame_marisa", C),
    ("れみりあ", "remilia_scarlet", C),
    ("いざよいさくや", "izayoi_sakuya", C),
    ("こんぱくようむ", "konpaku_youmu", C),
    ("さいぎょうじゆゆこ", "saigyouji_yuyuko", C),
    ("ちるの", "cirno", C),
    ("あやなみれい", "ayanami_rei", C),
    ("そうりゅうあすか", "souryuu_asuka_langley", C),
    ("ときさきくるみ", "tokisaki_kurumi", C),
    ("えみりあ", "emilia_(re:zero)", C),
    ("れむ", "rem_(re:zero)", C),
    ("あすな", "asuna_(sao)", C),
    ("みかさ", "mikasa_ackerman", C),
    ("かまどねずこ", "kamado_nezuko", C),
    ("ねずこ", "kamado_nezuko", C),
    ("こちょうしのぶ", "kochou_shinobu", C),
    ("まきま", "makima_(chainsaw_man)", C),
    ("パワー", "power_(chainsaw_man)", C),
    ("ごじょうさとる", "gojou_satoru", C),
    ("アーニャ", "anya_(spy_x_family)", C),
    ("よる", "yor_briar", C),
    ("ほしのあい", "hoshino_ai", C),
    ("ごとうひとり", "gotoh_hitori", C),
    ("フリーレン", "frieren", C),
    ("アルトリア", "artoria_pendragon_(fate)", C),
    ("とおさかりん", "tohsaka_rin", C),
    ("まとうさくら", "matou_sakura", C),
    ("マシュ", "mash_kyrielight", C),
    ("みなとあくあ", "minato_aqua", C),
    ("うさだぺこら", "usada_pekora", C),
    ("ぺこら", "usada_pekora", C),
    ("ほうしょうまりん", "houshou_marine", C),
    ("ほしまちすいせい", "hoshimachi_suisei", C),
    ("がうるぐら", "gawr_gura", C),
    ("ピカチュウ", "pikachu", C),
    ("ゼルダ", "princess_zelda", C),
    ("めぐみん", "megumin", C),
    ("ゆきのしたゆきの", "yukinoshita_yukino", C),
    ("なかのみく", "nakano_miku", C),
    ("かふうちの", "kafuu_chino", C),
    ("こうさかほのか", "kosaka_honoka", C),
    ("みなみことり", "minami_kotori", C),
    ("いぬがみころね", "inugami_korone", C),
    ("ねこまたおかゆ", "nekomata_okayu", C),
    ("キズナアイ", "kizuna_ai", C),
    ("やえみこ", "yae_miko", C),
    ("かみさとあやか", "kamisato_ayaka", C),
    ("かまどたんじろう", "kamado_tanjirou", C),
    ("うずまきなると", "uzumaki_naruto", C),
    ("しぐれうい", "shigure_ui", A),
    ("えびふりゃ", "ebifurya", A),
    ("かんとく", "kantoku", A),
    ("にんげんまめ", "ningen_mame", A),
]
# Kanji are not read (no dictionary): these show what a kanji query finds.
KANJI: list[tuple[str, str, TagCategory]] = [
    ("初音ミク", "hatsune_miku", C),
    ("博麗霊夢", "hakurei_reimu", C),
    ("白上フブキ", "shirakami_fubuki", C),
    ("竈門禰豆子", "kamado_nezuko", C),
]

Query = tuple[str, str, TagCategory]


def popular(csv_path: Path, category: TagCategory, n: int) -> list[str]:
    rows = []
    with open(csv_path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 3 and row[1] == str(int(category)) and row[2].isdigit():
                rows.append((int(row[2]), row[0]))
    return [name for _, name in sorted(rows, reverse=True)[:n]]


def typo(name: str, rng: random.Random) -> str:
    """``name`` (maybe cut, maybe with spaces) with one edit at a letter after the first."""
    text = name if rng.random() < 0.5 else name[: max(5, round(len(name) * rng.uniform(0.6, 1.0)))]
    if rng.random() < 0.3:
        text = text.replace("_", " ")
    letters = [i for i in range(1, len(text)) if text[i].isalpha()]
    i = rng.choice(letters)
    kind = rng.choice(("deletion", "insertion", "substitution", "transposition"))
    other = rng.choice([c for c in string.ascii_lowercase if c != text[i]])
    if kind == "deletion":
        return text[:i] + text[i + 1 :]
    if kind == "insertion":
        return text[:i] + other + text[i:]
    if kind == "substitution":
        return text[:i] + other + text[i + 1 :]
    j = i + 1 if i + 1 < len(text) and text[i + 1] != text[i] else i - 1
    if j < 1 or text[j] == text[i]:
        return text[:i] + other + text[i + 1 :]
    a, b = sorted((i, j))
    return text[:a] + text[b] + text[a] + text[b + 1 :]


def later_word(name: str, rng: random.Random) -> str | None:
    """A later word of ``name`` (not a parenthesized qualifier), whole or its first 4+ letters."""
    words = [w for w in name.split("_")[1:] if w and not w.startswith("(") and len(w) >= 3]
    if not words:
        return None
    word = rng.choice(words)
    return word if len(word) <= 4 or rng.random() < 0.5 else word[: rng.randint(4, len(word))]


def build_queries(csv_path: Path, rng: random.Random) -> dict[str, list[Query]]:
    artists, characters = popular(csv_path, A, 300), popular(csv_path, C, 300)
    typos = [(typo(n, rng), n, A) for n in artists if len(n) >= 5]
    typos += [(typo(n, rng), n, C) for n in characters if len(n) >= 5]
    partial = [(w, n, A) for n in artists if (w := later_word(n, rng))]
    partial += [(w, n, C) for n in characters if (w := later_word(n, rng))]
    plain: list[Query] = [
        (text, "", category or A) for text, category in make_queries(csv_path, 3000, rng) if category is not None
    ]
    plain += [(text, "", C) for text, _ in make_queries(csv_path, 2000, rng)]
    return {"typo": typos, "partial": partial, "japanese (kana)": JAPANESE, "kanji": KANJI, "plain prefix": plain}


def run(db: TagDatabase, groups: dict[str, list[Query]], label: str) -> None:
    print(f"\n== {label}: {len(db):,} tags; load average {os.getloadavg()[0]:.2f} ==")
    print(
        f"{'queries':18s} {'n':>5s} {'found before':>13s} {'found after':>12s}   "
        "after, ms: wall p50 / p99 / max; thread CPU p99 / max | before: wall p99 / max"
    )
    everything: list[float] = []
    everything_cpu: list[float] = []
    everything_before: list[float] = []
    for name, queries in groups.items():
        usable = [q for q in queries if not q[1] or db.get(q[1]) is not None]
        found_before = found_after = 0
        times: list[float] = []
        cpu: list[float] = []
        times_before: list[float] = []
        for typed, intended, category in usable:
            t0 = time.perf_counter()
            before = {m.name for m in db.search(typed, category, similar=False)}
            times_before.append((time.perf_counter() - t0) * 1000)
            c0, t0 = time.thread_time(), time.perf_counter()
            after = db.search(typed, category)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
            found_before += intended in before
            found_after += intended in {m.name for m in after}
        everything += times
        everything_cpu += cpu
        everything_before += times_before
        share = (
            f"{found_before / len(usable):12.0%} {found_after / len(usable):12.0%}"
            if usable and usable[0][1]
            else f"{'-':>12s} {'-':>12s}"
        )
        print(
            f"{name:18s} {len(usable):5d} {share}   "
            f"{percentile(times, 50):.3f} / {percentile(times, 99):.3f} / {max(times):.3f}; "
            f"{percentile(cpu, 99):.3f} / {max(cpu):.3f} | "
            f"{percentile(times_before, 99):.3f} / {max(times_before):.3f}"
        )
    print(
        f"{'all':18s} {len(everything):5d} {'':25s}   {percentile(everything, 50):.3f} / "
        f"{percentile(everything, 99):.3f} / {max(everything):.3f}; "
        f"{percentile(everything_cpu, 99):.3f} / {max(everything_cpu):.3f} | "
        f"{percentile(everything_before, 99):.3f} / {max(everything_before):.3f}"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def open_timed(csv_path: Path, folder: Path) -> TagDatabase:
    db_path = folder / (csv_path.name + ".db")
    import_csv(csv_path, db_path)
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    db = TagDatabase.open(db_path, lazy=True)
    t1 = time.perf_counter()
    db.lookup(["hatsune_miku", "1girl", "looking at viewer"])
    t2 = time.perf_counter()
    db.index()
    t3 = time.perf_counter()
    db.prepare()
    t4 = time.perf_counter()
    gc.collect()
    rss = rss_bytes() - rss0
    print(
        f"{csv_path.name}: lazy open {1000 * (t1 - t0):.1f} ms, "
        f"a 3-tag lookup before the index {1000 * (t2 - t1):.1f} ms, "
        f"prefix index {t3 - t1:.2f} s, sounds-alike + typo indexes {t4 - t3:.2f} s; RSS +{rss / 1e6:.0f} MB"
    )
    index = db.index()
    prefix_only = _deep_size([index._tags, index._norm_names, index._all, *index._by_category.values()])
    print(
        f"  memory_bytes(): {db.memory_bytes() / 1e6:.1f} MB, of which the prefix index and Tags "
        f"{prefix_only / 1e6:.1f} MB (deep getsizeof; numpy arrays by nbytes)"
    )
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=default_csv())
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--bundled-only", action="store_true", help="skip the full list")
    args = parser.parse_args()
    if not args.csv.is_file():
        sys.exit(f"tag CSV not found: {args.csv} (set ANIMEBOT_DANBOORU_CSV or pass --csv)")
    groups = build_queries(args.csv, random.Random(args.seed))
    with tempfile.TemporaryDirectory(prefix="bench_autocomplete_") as tmp:
        sets = [DEFAULT_TAGS_FILE] if args.bundled_only else [args.csv, DEFAULT_TAGS_FILE]
        for path in sets:
            db = open_timed(path, Path(tmp))
            for typed, _, category in groups["plain prefix"][:300]:  # warm-up
                db.search(typed, category)
            run(db, groups, f"{path.name}")
            del db
            gc.collect()


if __name__ == "__main__":
    main()
