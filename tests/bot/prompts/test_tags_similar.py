"""Similar-tag fill of the tag search (sounds-alike, kana, typos), the kana -> romaji conversion, and the lazy
tag database (lookups from the file's tag_keys table, the index built on first search)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main
from bot.prompts.tags import MAX_LIMIT, TagCategory, TagDatabase, TagMatch, import_csv
from bot.prompts.tags.bundled import DEFAULT_TAGS_FILE
from bot.prompts.tags.fuzzy import GramIndex, max_typos, prefix_distance, prefix_distances
from bot.prompts.tags.index import TagIndex
from bot.prompts.tags.kana import has_kana, phonetic, to_romaji

C, A, G = TagCategory.CHARACTER, TagCategory.ARTIST, TagCategory.GENERAL

SIMILAR_CSV = """\
1girl,0,6008644,"1girls,sole_female"
hatsune_miku,4,106634,/hm
hatsune_miku_(append),4,3000,miku_append
hatsune_(princess_connect!),4,900,
hatsume_mei,4,2000,
zatsune_miku,4,40,
nakano_miku,4,3462,
shirakami_fubuki,4,10913,
fubuki_(kancolle),4,12000,
kousaka_kirino,4,2734,
kosaka_honoka,4,4862,kousaka_honoka
matcha_(food),0,3000,
hatsune_miku_(artist),1,80,
wlop,1,365,ghostblade_artist
ebifurya,1,5924,ebifly
cirno,4,34942,
"""


def names(matches: list[TagMatch]) -> list[str]:
    return [m.name for m in matches]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> TagDatabase:
    folder = tmp_path_factory.mktemp("similar")
    (folder / "t.csv").write_text(SIMILAR_CSV, encoding="utf-8")
    import_csv(folder / "t.csv", folder / "t.db")
    return TagDatabase.open(folder / "t.db")


# --- kana -> romaji -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kana", "romaji"),
    [
        ("はつねみく", "hatsunemiku"),
        ("ハツネミク", "hatsunemiku"),
        ("ﾊﾂﾈﾐｸ", "hatsunemiku"),  # half-width katakana: NFKC first
        ("しらかみふぶき", "shirakamifubuki"),
        ("ちゃ", "cha"),
        ("きょう", "kyou"),
        ("まっちゃ", "matcha"),  # small tsu before ch: tch
        ("ほっと", "hotto"),  # small tsu: the next consonant doubled
        ("ラーメン", "raamen"),  # ー: the previous vowel again
        ("かんい", "kan'i"),  # ん before a vowel
        ("しんや", "shin'ya"),
        ("ファイア", "faia"),
        ("ヴァイオレット", "vaioretto"),
        ("じぇ", "je"),
        ("をを", "oo"),
        ("ミク miku 初音", "miku miku 初音"),  # everything else is kept
        ("", ""),
        ("っ", ""),  # a trailing small tsu doubles nothing
        ("ーあ", "a"),  # a long mark with no vowel before it
    ],
)
def test_to_romaji(kana: str, romaji: str) -> None:
    assert to_romaji(kana) == romaji


@pytest.mark.parametrize(
    "spellings",
    [
        ("shi", "si", "し"),
        ("tsu", "tu", "つ"),
        ("chi", "ti", "ち"),
        ("fu", "hu", "ふ"),
        ("ji", "zi", "じ"),
        ("sha", "sya", "しゃ"),
        ("kousaka", "kosaka", "koosaka", "kōsaka", "こうさか", "コーサカ"),
        ("ryuuko", "ryuko", "りゅうこ"),
        ("shimbun", "shinbun", "しんぶん"),
        ("hatsune_miku", "Hatsune Miku", "hatunemiku", "はつねみく", "ハツネ・ミク"),
        ("kan'i", "kani", "かんい"),
    ],
)
def test_phonetic_folds_spellings(spellings: tuple[str, ...]) -> None:
    keys = {phonetic(to_romaji(s)) for s in spellings}
    assert len(keys) == 1, keys


def test_phonetic_and_has_kana_on_odd_input() -> None:
    assert phonetic("") == phonetic("初音") == phonetic("!!!") == phonetic("\u200b") == ""
    assert phonetic("Ａｂ_1") == "ab1"
    assert has_kana("ミク") and has_kana("ﾐｸ") and has_kana("みく") and has_kana("ー")
    assert not has_kana("miku") and not has_kana("初音") and not has_kana("")


# --- fuzzy pieces -------------------------------------------------------------------------------------


def test_prefix_distance_and_typo_budget() -> None:
    assert prefix_distance("hatsnue", "hatsune_miku", 1) == 1  # a transposition is one edit
    assert prefix_distance("hatune", "hatsune_miku", 1) == 1
    assert prefix_distance("hatsune", "hatsune_miku", 1) == 0
    assert prefix_distance("zzzzzz", "hatsune_miku", 2) == 3  # over the limit: limit + 1
    assert [max_typos(n) for n in (0, 3, 4, 7, 8, 30)] == [0, 0, 1, 1, 2, 2]
    keys = ["hatsune_miku", "hatune", "h", "", "zzzzzzzz", "hatsnue_m"]
    for limit in (0, 1, 2):  # the batched form agrees with the one-by-one form
        expected = [min(prefix_distance("hatsune", k, limit), limit + 1) for k in keys]
        assert prefix_distances("hatsune", keys, limit).tolist() == expected
    assert prefix_distances("abc", [], 1).tolist() == []


def test_gram_index_edge_cases() -> None:
    import numpy as np

    empty = GramIndex([])
    assert empty.candidates("abc", 1, np.empty(0, dtype=np.int32), 10).tolist() == []
    index = GramIndex(["abcd", "abce", "xyz", ""])
    order = np.arange(4, dtype=np.int32)
    assert index.candidates("abcd", 0, order, 10).tolist()[0] == 0
    assert index.candidates("", 1, order, 10).tolist() == []
    assert index.candidates("qqqq", 1, order, 10).tolist() == []  # no shared bigram
    assert len(index.candidates("abc", 3, order, 1)) == 1  # at most `limit`


# --- the fill ---------------------------------------------------------------------------------------


def test_typos_find_the_tag(db: TagDatabase) -> None:
    assert names(db.search("hatsnue_miku", C))[0] == "hatsune_miku"  # transposition
    assert names(db.search("hatune miku", C))[0] == "hatsune_miku"  # deletion, typed with a space
    assert names(db.search("hatsunne_m", C))[0] == "hatsune_miku"  # insertion, typed halfway
    assert "shirakami_fubuki" in names(db.search("shirakam_fubuki", C))
    assert names(db.search("wlpo", A)) == ["wlop"]
    assert names(db.search("ebifurua", A)) == ["ebifurya"]


def test_prefix_matches_come_first_then_sounds_alike_then_typos(db: TagDatabase) -> None:
    found = names(db.search("hatsune", C))
    prefix = names(db.search("hatsune", C, similar=False))
    assert prefix == ["hatsune_miku", "hatsune_miku_(append)", "hatsune_(princess_connect!)"]
    assert found[: len(prefix)] == prefix
    # Then what is one edit from "hatsune", most posts first: hatsume_mei (2,000) before zatsune_miku (40).
    assert found[len(prefix) :] == ["hatsume_mei", "zatsune_miku"]
    # A later word: "miku" starts no character's name, but ends three (and an alias of one).
    assert names(db.search("miku", C, similar=False)) == ["hatsune_miku_(append)"]
    assert names(db.search("miku", C)) == ["hatsune_miku_(append)", "hatsune_miku", "nakano_miku", "zatsune_miku"]


def test_fewer_edits_rank_before_more_posts(db: TagDatabase) -> None:
    # "zatsunf_miku": one edit from zatsune_miku (40 posts), two from hatsune_miku (106,634).
    assert names(db.search("zatsunf_miku", C))[:2] == ["zatsune_miku", "hatsune_miku"]


def test_the_category_is_respected(db: TagDatabase) -> None:
    assert "hatsune_miku_(artist)" not in names(db.search("hatsnue_miku", C))
    assert names(db.search("hatsnue_miku", A)) == ["hatsune_miku_(artist)"]
    assert all(m.category == C for m in db.search("はつね", C))
    assert names(db.search("matcha", C)) == [] and names(db.search("まっちゃ", G)) == ["matcha_(food)"]
    every = names(db.search("hatsnue_miku"))  # no category: every category's similar tags
    assert {"hatsune_miku", "hatsune_miku_(artist)"} <= set(every)


def test_the_limit_is_respected(db: TagDatabase) -> None:
    assert len(db.search("hatsnue", C, limit=2)) == 2
    assert db.search("hatsnue", C, limit=0) == [] and db.search("hatsnue", C, limit=-3) == []
    assert len(db.search("hatsnue", C, limit=1000)) <= MAX_LIMIT
    empty = TagDatabase.from_tags([])
    assert empty.search("hatsnue") == [] and empty.search("") == [] and len(empty) == 0


def test_fill_never_exceeds_the_limit(tmp_path: Path) -> None:
    csv = tmp_path / "many.csv"
    csv.write_text("\n".join(f"hatsune_{i:03d},4,{1000 - i}," for i in range(60)) + "\nhatsume,4,5000,\n")
    import_csv(csv, tmp_path / "many.db")
    db = TagDatabase.open(tmp_path / "many.db")
    found = db.search("hatsume_0", C)  # one prefix match, then many one-edit tags
    assert names(found)[0] == "hatsume" and len(found) == MAX_LIMIT
    assert len(set(names(found))) == MAX_LIMIT


@pytest.mark.parametrize(
    "typed",
    ["", "   ", "\u200b", "!!!", "\ud800", "x" * 1000, "ー", "っ", "ッッッ", "初音", "_", "(", "\\", "%", "ab\x00cd"],
)
def test_odd_input_gives_a_short_list(db: TagDatabase, typed: str) -> None:
    for category in (None, C, A):
        found = db.search(typed, category)
        assert len(found) <= MAX_LIMIT and len(set(names(found))) == len(found)


def test_kana_finds_the_romanized_tag(db: TagDatabase) -> None:
    assert names(db.search("はつねみく", C))[0] == "hatsune_miku"
    assert names(db.search("ハツネ", C))[:2] == ["hatsune_miku", "hatsune_miku_(append)"]
    assert "shirakami_fubuki" in names(db.search("ふぶき", C))  # a later word
    assert names(db.search("こうさかほのか", C)) == ["kosaka_honoka"]  # ou / o
    assert names(db.search("コーサカ", C))[:2] == ["kosaka_honoka", "kousaka_kirino"]


# --- lazy opening ---------------------------------------------------------------------------------


def test_lazy_lookup_reads_the_file_and_agrees_with_the_index(db: TagDatabase) -> None:
    assert db.path is not None
    lazy = TagDatabase.open(db.path, lazy=True)
    inputs = ["1girl", "1girls", "Sole Female", "/hm", "HATSUNE MIKU", "kousaka_honoka", "ghostblade artist"]
    inputs += ["nope", "", "  "]
    assert lazy.lookup(inputs) == db.lookup(inputs)
    assert lazy.get("ebifly") == db.get("ebifurya")
    assert not lazy.loaded and len(lazy) == len(db)  # still not loaded: the count is in the meta table
    assert names(lazy.search("hatsnue", C)) == names(db.search("hatsnue", C))
    assert lazy.loaded
    with pytest.raises(TypeError):
        lazy.lookup("1girl")


@pytest.mark.parametrize("damage", ["drop the table", "another key version"])
def test_lazy_lookup_without_a_usable_key_table_uses_the_index(tmp_path: Path, damage: str) -> None:
    """A database imported before tag_keys existed (or by another normalize) is still looked up right."""
    (tmp_path / "t.csv").write_text(SIMILAR_CSV, encoding="utf-8")
    import_csv(tmp_path / "t.csv", tmp_path / "t.db")
    with sqlite3.connect(tmp_path / "t.db") as conn:
        if damage == "drop the table":
            conn.execute("DROP TABLE tag_keys")
        else:
            conn.execute("UPDATE tag_keys SET key = 'wrong_' || key")
            conn.execute("UPDATE tag_meta SET value = 'old' WHERE key = 'key_version'")
    conn.close()
    lazy = TagDatabase.open(tmp_path / "t.db", lazy=True)
    assert lazy.get("/hm") is not None and lazy.get("/hm").name == "hatsune_miku"  # type: ignore[union-attr]
    assert lazy.loaded  # it had to build the index


def test_cli_dry_run_builds_no_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`animebot generate` looks its few tags up in the file: the same prompt, without the 1-2 s index."""
    config = tmp_path / "config.toml"
    config.write_text('data_dir = "d"\n', encoding="utf-8")
    tags_db = tmp_path / "d" / "tags.sqlite"
    args = ["generate", "smile, hatsune miku, 1girl, wlop", "--model", "tiny-anima", "--dry-run"]
    args += ["--config", str(config)]
    # Without a tag_keys table the lookups use the in-memory index, as before: the reference prompt.
    import_csv(DEFAULT_TAGS_FILE, tags_db)
    with sqlite3.connect(tags_db) as conn:
        conn.execute("DROP TABLE tag_keys")
    conn.close()
    assert main(args) == 0
    reference = json.loads(capsys.readouterr().out)["prompt"]
    assert reference.index("1girl") < reference.index("hatsune miku") < reference.index("smile")  # recognized

    import_csv(DEFAULT_TAGS_FILE, tags_db)

    def no_index(*_: object) -> TagIndex:
        raise AssertionError("the index was built")

    monkeypatch.setattr(TagIndex, "build", no_index)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == reference
