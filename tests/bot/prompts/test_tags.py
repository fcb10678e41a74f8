"""bot.prompts.tags: CSV import, prefix search, lookup, error handling (plus a check over the real tag list)."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import bot.prompts.tags as tags_module
import bot.prompts.tags.db as tags_db
import bot.prompts.tags.importer as tags_importer
import bot.prompts.tags.index as tags_index
from bot.prompts.tags import (
    MAX_LIMIT,
    ImportReport,
    Tag,
    TagCategory,
    TagDatabase,
    TagDatabaseError,
    TagImportError,
    import_csv,
    normalize,
)

REPO = Path(__file__).resolve().parents[3]

# Tricky rows on purpose; line numbers matter for the malformed-row assertions below.
TEST_CSV = """\
1girl,0,6008644,"1girls,sole_female"
long_hair,0,4350743,"/lh,longhair,long hair"
looking_at_viewer,0,3315722,"/lav,pov_eye_contact"
looking_back,0,500000,
looking_at_another,0,264736,""
viewer_pov,0,900000,"pov"
pov,0,200000,"first-person_view"
firefly_(honkai:_star_rail),4,8383,"hotaru_(honkai:_star_rail)"
honkai:_star_rail,3,90000,"hsr,honkai_star_rail"
firefly,0,362,
wlop,1,365,"ghostblade_artist"
ebifurya,1,5924,ebifly
\\m/,0,1000,"metal_horns"
pokémon,3,100000,"ポケモン,pokemon"
ranma_1/2,3,5335,"ranma_½"
this,is,not,a,tag,row
broken_count,0,lots,""

,0,5,""
species_tag,7,10,""
1girl,0,5,""
no_alias_field,0,77
  spaced name  ,5,42,"  spaced alias , ,"
"""
TRICKY_LINES = {"this": 16, "broken_count": 17, "empty_name": 19, "species": 20, "dup_1girl": 21}

# 40 artists sharing a prefix, to exercise the 25-result cap.
MANY_ARTISTS = "".join(f"artist_{i:02d},1,{1000 - i},\n" for i in range(40))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path: Path) -> tuple[ImportReport, TagDatabase]:
    csv = write(tmp_path / "tags.csv", TEST_CSV + MANY_ARTISTS)
    report = import_csv(csv, tmp_path / "db" / "tags.sqlite")  # parent folder is created
    return report, TagDatabase.open(tmp_path / "db" / "tags.sqlite")


@pytest.fixture
def db(small: tuple[ImportReport, TagDatabase]) -> TagDatabase:
    return small[1]


def names(matches: list[tags_module.TagMatch]) -> list[str]:
    return [m.name for m in matches]


# --- normalize -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("looking at", "looking_at"),
        ("looking_at", "looking_at"),
        ("Looking At", "looking_at"),
        ("  looking   at  ", "looking_at"),
        ("looking__at", "looking_at"),
        ("looking\tat", "looking_at"),
        (r"firefly \(honkai: star rail\)", "firefly_(honkai:_star_rail)"),
        ("firefly_(honkai:_star_rail)", "firefly_(honkai:_star_rail)"),
        ("\\m/", "\\m/"),
        ("POKÉMON", "pokémon"),
        ("ｐｏｋｅ", "poke"),  # full-width
        ("Straße", "strasse"),  # casefold, not lower
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


# --- import ----------------------------------------------------------------------------------


def test_import_report_counts_and_problem_lines(small: tuple[ImportReport, TagDatabase]) -> None:
    report, db = small
    assert report.tags == len(db) == 17 + 40
    assert report.rows == 22 + 40  # the blank line is not a row
    assert report.malformed == 3  # 6 fields, non-numeric count, empty name
    assert report.unknown_category == 1  # category 7 is skipped, not filed as general
    assert report.duplicates == 1  # the second 1girl (fewer posts) is dropped
    assert report.by_category[TagCategory.ARTIST] == 2 + 40
    assert report.by_category[TagCategory.COPYRIGHT] == 3
    assert report.by_category[TagCategory.CHARACTER] == 1
    assert report.by_category[TagCategory.META] == 1
    assert report.malformed_lines == tuple(TRICKY_LINES[k] for k in ("this", "broken_count", "empty_name"))
    assert [(p.line, p.kind) for p in report.problems[3:]] == [
        (TRICKY_LINES["species"], "unknown_category"),
        (TRICKY_LINES["dup_1girl"], "duplicate"),
    ]
    assert "found 6" in report.problems[0].reason
    assert "'lots'" in report.problems[1].reason
    summary = str(report)
    assert "imported 57 tags" in summary and "line 16:" in summary and "unknown category" in summary


def test_import_cleans_names_and_aliases(db: TagDatabase) -> None:
    spaced = db.lookup(["spaced name"])["spaced name"]
    assert spaced == Tag("spaced_name", TagCategory.META, 42, ("spaced alias",))
    # "long hair" normalizes like "longhair"? no: like "long_hair", the name itself, so it is dropped.
    assert db.lookup(["long_hair"])["long_hair"].aliases == ("/lh", "longhair")
    assert db.lookup(["no_alias_field"])["no_alias_field"].aliases == ()
    assert db.lookup(["1girl"])["1girl"].post_count == 6008644  # the duplicate with 5 posts lost
    assert db.lookup(["ebifurya"])["ebifurya"].aliases == ("ebifly",)  # unquoted alias field


def test_bom_crlf_and_undecodable_bytes(tmp_path: Path) -> None:
    data = '\ufeff1girl,0,10,"1girls"\r\nsolo,0,5,""\r\n'.encode() + b"bad\xff,0,1,\r\nsmile,0,3,\r\n"
    csv = tmp_path / "t.csv"
    csv.write_bytes(data)
    report = import_csv(csv, tmp_path / "t.db")
    db = TagDatabase.open(tmp_path / "t.db")
    assert sorted(t.name for t in db.lookup(["1girl", "solo", "smile"]).values()) == [
        "1girl",
        "smile",
        "solo",
    ]
    assert report.malformed == 1 and report.problems[0].line == 3 and "UTF-8" in report.problems[0].reason


def test_quotes_inside_fields_and_a_stray_quote(tmp_path: Path) -> None:
    csv = write(
        tmp_path / "q.csv",
        '"don\'t_say_""lazy""",0,1076,don\'t_say_lazy\n'  # CSV-escaped quotes, as in the real list
        'itou_nobuhiro,1,86,"""no""_(pixiv3794),no_(pixiv3794)"\n'
        'stray_quote,0,5,"oops\n'  # unterminated: must not swallow the following lines
        "after_stray,0,4,\n"
        'too,"many",0,1,""\n',
    )
    report = import_csv(csv, tmp_path / "q.db")
    db = TagDatabase.open(tmp_path / "q.db")
    assert report.tags == 4 and report.malformed_lines == (5,)
    assert db.get('don\'t say "lazy"') == Tag('don\'t_say_"lazy"', TagCategory.GENERAL, 1076, ("don't_say_lazy",))
    assert db.get('"no" (pixiv3794)') == db.get("itou_nobuhiro")
    assert [(m.name, m.matched_alias) for m in db.search('"n')] == [("itou_nobuhiro", '"no"_(pixiv3794)')]
    assert db.get("after_stray") is not None


def test_only_the_first_few_problem_lines_are_kept(tmp_path: Path) -> None:
    good = "".join(f"tag_{i},0,{i},\n" for i in range(100))
    csv = write(tmp_path / "m.csv", good + "bad row\n" * 30)
    report = import_csv(csv, tmp_path / "m.db")
    assert report.malformed == 30
    assert report.malformed_lines == tuple(range(101, 101 + tags_importer.MAX_PROBLEMS))
    assert f"... and {30 - tags_importer.MAX_PROBLEMS} more" in report.summary()


def test_reimport_replaces_everything(tmp_path: Path) -> None:
    db_path = tmp_path / "tags.db"
    import_csv(write(tmp_path / "a.csv", TEST_CSV), db_path)
    assert "wlop" in TagDatabase.open(db_path).lookup(["wlop"])
    report = import_csv(write(tmp_path / "b.csv", 'smile,0,10,"grin"\nsolo,0,20,\n'), db_path)
    assert report.tags == 2
    db = TagDatabase.open(db_path)
    assert len(db) == 2
    assert db.lookup(["wlop", "smile", "grin"]) == {
        "smile": Tag("smile", TagCategory.GENERAL, 10, ("grin",)),
        "grin": Tag("smile", TagCategory.GENERAL, 10, ("grin",)),
    }
    assert names(db.search("")) == ["solo", "smile"]
    with sqlite3.connect(db_path) as conn:  # old aliases gone too
        assert conn.execute("SELECT COUNT(*) FROM tag_aliases").fetchone() == (1,)


def test_failed_reimport_keeps_the_previous_list(tmp_path: Path) -> None:
    db_path = tmp_path / "tags.db"
    import_csv(write(tmp_path / "a.csv", TEST_CSV), db_path)
    before = db_path.read_bytes()
    with pytest.raises(TagImportError):
        import_csv(write(tmp_path / "bad.csv", '{"not": "a tag list"}\n'), db_path)
    assert db_path.read_bytes() == before
    assert len(TagDatabase.open(db_path)) == 17


def test_write_failure_rolls_back_to_the_previous_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_path = tmp_path / "tags.db"
    import_csv(write(tmp_path / "a.csv", TEST_CSV), db_path)
    # Fail after the old tables were dropped and the new ones created, inside the transaction.
    monkeypatch.setattr(tags_db, "_SCHEMA", tags_db._SCHEMA + "CREATE TABLE tags (oops);")
    with pytest.raises(TagImportError, match="writing tag database"):
        import_csv(write(tmp_path / "b.csv", "smile,0,10,\n"), db_path)
    db = TagDatabase.open(db_path)
    assert len(db) == 17 and "smile" not in db.lookup(["smile"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("", "empty"),
        ("\n\n  \n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ('{"tags": ["1girl", "solo"]}\n', "does not look like"),
        ("name,category,post_count,aliases\n", "does not look like"),
        ("tag\tcategory\tcount\n1girl\t0\t100\n", "does not look like"),
        # a few good rows drowned in bad ones
        ("1girl,0,10,\nsolo,0,5,\n" + "x,y,z,w\n" * 5, "5 of 7 rows malformed"),
    ],
    ids=["missing", "empty", "blank", "binary", "json", "header-only", "tsv", "mostly-bad"],
)
def test_not_a_tag_csv(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    csv = tmp_path / "in.csv"
    if isinstance(content, bytes):
        csv.write_bytes(content)
    elif content is not None:
        csv.write_text(content, encoding="utf-8")
    db_path = tmp_path / "tags.db"
    with pytest.raises(TagImportError, match=message) as info:
        import_csv(csv, db_path)
    assert str(csv) in str(info.value)
    assert not db_path.exists()  # nothing is written before the CSV parsed


def test_csv_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TagImportError, match="not a file"):
        import_csv(tmp_path, tmp_path / "tags.db")


def test_import_refuses_to_overwrite_a_non_database(tmp_path: Path) -> None:
    csv = write(tmp_path / "a.csv", TEST_CSV)
    precious = write(tmp_path / "notes.txt", "my notes, not a database\n" * 100)
    with pytest.raises(TagImportError, match="not a SQLite database"):
        import_csv(csv, precious)
    assert precious.read_text(encoding="utf-8").startswith("my notes")


# --- open ------------------------------------------------------------------------------------


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(TagDatabaseError, match="not found"):
        TagDatabase.open(tmp_path / "missing.db")
    with pytest.raises(TagImportError, match="not a SQLite database"):  # a subclass of TagImportError
        TagDatabase.open(write(tmp_path / "text.db", "hello\n" * 200))
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE something (x)")
    with pytest.raises(TagDatabaseError, match="no tag list"):
        TagDatabase.open(other)
    ours = tmp_path / "tags.db"
    import_csv(write(tmp_path / "a.csv", TEST_CSV), ours)
    with sqlite3.connect(ours) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(TagDatabaseError, match="re-import"):
        TagDatabase.open(ours)


def test_meta_is_recorded(db: TagDatabase) -> None:
    assert db.meta["schema_version"] == str(tags_module.SCHEMA_VERSION)
    assert db.meta["tag_count"] == "57"
    assert len(db.meta["source_sha256"]) == 64


# --- search ----------------------------------------------------------------------------------


def test_prefix_search_ranked_by_post_count(db: TagDatabase) -> None:
    assert names(db.search("lo")) == [
        "long_hair",  # 4.35M
        "looking_at_viewer",  # 3.3M
        "looking_back",  # 500k
        "looking_at_another",  # 265k
    ]


@pytest.mark.parametrize("typed", ["looking at", "looking_at", "Looking At", "LOOKING_AT", " looking  at "])
def test_spaces_underscores_and_case(db: TagDatabase, typed: str) -> None:
    assert names(db.search(typed, similar=False)) == ["looking_at_viewer", "looking_at_another"]
    assert names(db.search(typed))[:2] == ["looking_at_viewer", "looking_at_another"]  # prefix matches first


def test_search_by_alias_reports_the_alias(db: TagDatabase) -> None:
    [match] = db.search("sole")
    assert (match.name, match.matched_alias) == ("1girl", "sole_female")
    [match] = db.search("/la")
    assert (match.name, match.matched_alias) == ("looking_at_viewer", "/lav")
    [match] = db.search("hotaru")
    assert (match.name, match.category) == ("firefly_(honkai:_star_rail)", TagCategory.CHARACTER)


def test_tag_matched_by_name_and_alias_appears_once(db: TagDatabase) -> None:
    # "long_hair" matches by name and by its alias "longhair"; the name wins.
    assert [(m.name, m.matched_alias) for m in db.search("long")] == [("long_hair", None)]
    # Only the alias matches "longh".
    assert [(m.name, m.matched_alias) for m in db.search("longh")] == [("long_hair", "longhair")]
    # "pov" is one tag's name and other tags' aliases: each tag appears once, most posts first.
    assert [(m.name, m.matched_alias) for m in db.search("pov")] == [
        ("looking_at_viewer", "pov_eye_contact"),
        ("viewer_pov", "pov"),
        ("pov", None),
    ]


def test_parentheses_escaped_or_not(db: TagDatabase) -> None:
    for typed in ("firefly (", r"firefly \(hon", "Firefly_(Honkai: Star", "firefly (honkai:_star_rail)"):
        assert names(db.search(typed, similar=False)) == ["firefly_(honkai:_star_rail)"], typed
    assert names(db.search("firefly", similar=False)) == ["firefly_(honkai:_star_rail)", "firefly"]
    assert names(db.search("\\m", similar=False)) == ["\\m/"]


def test_unicode(db: TagDatabase) -> None:
    assert [(m.name, m.matched_alias) for m in db.search("ポケ", similar=False)] == [("pokémon", "ポケモン")]
    assert names(db.search("POKÉ", similar=False)) == ["pokémon"]
    assert [(m.name, m.matched_alias) for m in db.search("ｐｏｋｅ", similar=False)] == [("pokémon", "pokemon")]
    assert names(db.search("ranma ½", similar=False)) == ["ranma_1/2"]
    first = db.search("ポケ")[0]
    assert (first.name, first.matched_alias) == ("pokémon", "ポケモン")


def test_category_filter(db: TagDatabase) -> None:
    assert names(db.search("w")) == ["wlop"]
    assert names(db.search("w", TagCategory.ARTIST)) == ["wlop"]
    assert db.search("w", TagCategory.GENERAL) == []
    assert names(db.search("h", TagCategory.COPYRIGHT)) == ["honkai:_star_rail"]
    assert names(db.search("h", TagCategory.CHARACTER)) == ["firefly_(honkai:_star_rail)"]  # via alias
    assert names(db.search("e", TagCategory.ARTIST)) == ["ebifurya"]
    assert names(db.search("e", 1)) == ["ebifurya"]  # type: ignore[arg-type]  # plain ints work too
    with pytest.raises(ValueError, match="unknown tag category"):
        db.search("e", 2)  # type: ignore[arg-type]


def test_limit_is_capped_at_25(db: TagDatabase) -> None:
    assert len(db.search("artist_")) == MAX_LIMIT
    assert len(db.search("artist", TagCategory.ARTIST, limit=100)) == MAX_LIMIT
    top5 = db.search("artist", TagCategory.ARTIST, limit=5)
    assert names(top5) == [f"artist_{i:02d}" for i in range(5)]
    assert db.search("artist", limit=0) == []
    assert len(db.search("", limit=1000)) == MAX_LIMIT


def test_empty_text_gives_the_most_used_tags(db: TagDatabase) -> None:
    assert names(db.search("", limit=3)) == ["1girl", "long_hair", "looking_at_viewer"]
    assert names(db.search("  ", TagCategory.ARTIST, limit=3)) == ["ebifurya", "artist_00", "artist_01"]
    assert names(db.search("", TagCategory.COPYRIGHT)) == ["pokémon", "honkai:_star_rail", "ranma_1/2"]


def test_results_are_fresh_lists(db: TagDatabase) -> None:
    first = db.search("")  # a precomputed answer
    first.clear()
    assert len(db.search("")) == MAX_LIMIT


def test_no_match(db: TagDatabase) -> None:
    assert db.search("zzz") == []
    assert db.search("\U0010ffff") == []


@pytest.mark.parametrize("threshold", [0, 1, 3, 512])
def test_search_agrees_with_brute_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: int) -> None:
    """Whether a prefix's top list is precomputed (small threshold) or scanned, answers are the same."""
    monkeypatch.setattr(tags_index, "SCAN_THRESHOLD", threshold)
    rng = random.Random(threshold)
    extra = "".join(
        f"{rng.choice('ab')}{rng.choice('ab_ ')}{rng.choice('abc')}x{i},{rng.choice([0, 1, 3, 4, 5])},"
        f'{rng.randint(0, 50)},"{rng.choice("ab")}{rng.choice("ab")}alias{i}"\n'
        for i in range(120)
    )
    import_csv(write(tmp_path / "t.csv", TEST_CSV + MANY_ARTISTS + extra), tmp_path / "t.db")
    db = TagDatabase.open(tmp_path / "t.db")
    by_rank = db.index()._tags  # most posts first, ties by name
    keys = [(normalize(k), rank) for rank, t in enumerate(by_rank) for k in (t.name, *t.aliases)]
    prefixes = {""} | {k[:n] for k, _ in keys for n in range(1, min(len(k), 5) + 1)} | {"zz", "a_b", "b a"}
    for prefix in sorted(prefixes):
        ranks = sorted({r for k, r in keys if k.startswith(normalize(prefix))})
        for category in (None, *TagCategory):
            expected = [by_rank[r] for r in ranks if category is None or by_rank[r].category == category]
            got = db.search(prefix, category, similar=False)
            assert [m.tag for m in got] == expected[:MAX_LIMIT], (prefix, category)
            assert [m.tag for m in db.search(prefix, category, limit=3, similar=False)] == expected[:3]
            # With the similar-tag fill: the prefix matches still come first, all of them, once each.
            filled = [m.tag for m in db.search(prefix, category)]
            assert filled[: len(expected[:MAX_LIMIT])] == expected[:MAX_LIMIT], (prefix, category)
            assert len(filled) == len(set(filled)) <= MAX_LIMIT


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_names_and_aliases(db: TagDatabase) -> None:
    inputs = [
        "1girl",
        "1girls",
        "Sole Female",
        "looking at viewer",
        r"firefly \(honkai: star rail\)",
        "hotaru (honkai: star rail)",
        "HSR",
        "pokemon",
        "looking_at",  # a prefix, not a tag
        "unknown tag",
        "",
    ]
    found = db.lookup(inputs)
    assert {k: v.name for k, v in found.items()} == {
        "1girl": "1girl",
        "1girls": "1girl",
        "Sole Female": "1girl",
        "looking at viewer": "looking_at_viewer",
        r"firefly \(honkai: star rail\)": "firefly_(honkai:_star_rail)",
        "hotaru (honkai: star rail)": "firefly_(honkai:_star_rail)",
        "HSR": "honkai:_star_rail",
        "pokemon": "pokémon",
    }
    assert found["HSR"].category is TagCategory.COPYRIGHT
    assert db.get("first person view") is None  # hyphen is not a space
    assert db.get("first-person view") == db.get("pov")


def test_lookup_name_beats_alias(db: TagDatabase) -> None:
    # "pov" is a tag's own name and an alias of the more popular "viewer_pov": the name wins.
    assert db.lookup(["pov"])["pov"].name == "pov"


def test_lookup_accepts_any_iterable_but_not_a_string(db: TagDatabase) -> None:
    def gen() -> Iterator[str]:
        yield "wlop"

    assert db.lookup(gen())["wlop"].category is TagCategory.ARTIST
    with pytest.raises(TypeError):
        db.lookup("wlop")


def test_memory_estimate(db: TagDatabase) -> None:
    assert 10_000 < db.memory_bytes() < 1_000_000


def test_category_parse() -> None:
    assert TagCategory.parse("artist") is TagCategory.ARTIST
    assert TagCategory.parse("Series") is TagCategory.COPYRIGHT
    assert TagCategory.parse("characters") is TagCategory.CHARACTER
    assert TagCategory.parse("4") is TagCategory.CHARACTER
    assert TagCategory.parse(5) is TagCategory.META
    with pytest.raises(ValueError, match="expected one of"):
        TagCategory.parse("species")


# --- the real Danbooru list (skipped when absent) --------------------------------------------

REAL_CSV = Path(os.environ.get("ANIMEBOT_DANBOORU_CSV", REPO.parent / "shared" / "data" / "danbooru.csv"))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImportReport, TagDatabase]:
    if not REAL_CSV.is_file():
        pytest.skip(f"real tag list not found at {REAL_CSV} (set ANIMEBOT_DANBOORU_CSV)")
    db_path = tmp_path_factory.mktemp("real") / "tags.db"
    report = import_csv(REAL_CSV, db_path)
    return report, TagDatabase.open(db_path)


def test_real_counts(real: tuple[ImportReport, TagDatabase]) -> None:
    report, db = real
    assert len(db) == report.tags == 140_782
    assert report.skipped == 0
    assert report.by_category[TagCategory.ARTIST] == 59_201
    assert report.by_category[TagCategory.GENERAL] == 30_782
    assert report.by_category[TagCategory.CHARACTER] == 40_931
    assert report.by_category[TagCategory.COPYRIGHT] == 9_478
    assert report.by_category[TagCategory.META] == 390


def test_real_searches(real: tuple[ImportReport, TagDatabase]) -> None:
    _, db = real
    assert names(db.search("", limit=3)) == ["1girl", "highres", "solo"]
    assert db.search("looking at")[0].name == "looking_at_viewer"
    assert db.search("wlo", TagCategory.ARTIST)[0].name == "wlop"
    assert db.search(r"firefly \(honkai", TagCategory.CHARACTER)[0].name == "firefly_(honkai:_star_rail)"
    boobs = db.search("boob")[0]
    assert (boobs.name, boobs.matched_alias) == ("breasts", "boobs")
    artists = db.search("a", TagCategory.ARTIST)
    assert len(artists) == 25 and all(m.category is TagCategory.ARTIST for m in artists)
    counts = [m.post_count for m in artists]
    assert counts == sorted(counts, reverse=True)
    found = db.lookup(["1girls", "Looking At Viewer", "firefly (honkai: star rail)", "not_a_real_tag_xyz"])
    assert {k: v.name for k, v in found.items()} == {
        "1girls": "1girl",
        "Looking At Viewer": "looking_at_viewer",
        "firefly (honkai: star rail)": "firefly_(honkai:_star_rail)",
    }


def test_real_search_agrees_with_brute_force(real: tuple[ImportReport, TagDatabase]) -> None:
    _, db = real
    tags = db.index()._tags
    entries = [(normalize(k), rank) for rank, t in enumerate(tags) for k in (t.name, *t.aliases)]
    rng = random.Random(7)
    for _ in range(40):
        name = rng.choice(entries)[0]
        prefix = name[: rng.randint(1, 6)]
        category = rng.choice([None, TagCategory.ARTIST, TagCategory.CHARACTER])
        ranks = sorted({r for k, r in entries if k.startswith(prefix)})
        expected = [tags[r].name for r in ranks if category is None or tags[r].category == category][:25]
        assert names(db.search(prefix, category, similar=False)) == expected, (prefix, category)
        assert names(db.search(prefix, category))[: len(expected)] == expected, (prefix, category)


# --- what a failure is called (bugs 12, 13) -----------------------------------------------------


def test_import_refuses_a_database_with_other_tables(tmp_path: Path) -> None:
    """The bot's main database (or any other) is never overwritten by a tag import."""
    main_db = tmp_path / "animebot.sqlite"
    with sqlite3.connect(main_db) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 3")
    before = main_db.read_bytes()
    with pytest.raises(TagImportError, match=r"other tables \(jobs\), not a tag database; refusing to overwrite"):
        import_csv(write(tmp_path / "a.csv", TEST_CSV), main_db)
    assert main_db.read_bytes() == before


def test_post_counts_beyond_sqlite_are_malformed_rows(tmp_path: Path) -> None:
    csv = write(
        tmp_path / "big.csv",
        f"huge,0,{2**63},\nhuger,0,{'9' * 5000},\nweird_category,{'9' * 5000},5,\n" + TEST_CSV,
    )
    report = import_csv(csv, tmp_path / "t.db")
    assert report.tags == 17 and report.malformed == 3 + 3
    reasons = [p.reason for p in report.problems if p.line <= 3]
    assert reasons[0] == "post count '9223372036854775808' is too large (at most 9,223,372,036,854,775,807)"
    assert "(5,000 characters) is too large" in reasons[1]
    assert "is not one of 0, 1, 3, 4, 5" in reasons[2]


def test_a_locked_database_is_called_locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_path = tmp_path / "tags.db"
    import_csv(write(tmp_path / "a.csv", TEST_CSV), db_path)
    monkeypatch.setattr(tags_db, "BUSY_TIMEOUT", 0.1)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(tags_module.TagDatabaseBusy, match="is locked by another process"):
            TagDatabase.open(db_path)
        with pytest.raises(tags_module.TagDatabaseBusy, match="is locked by another process"):
            import_csv(write(tmp_path / "b.csv", "smile,0,10,\n"), db_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(TagDatabase.open(db_path)) == 17
