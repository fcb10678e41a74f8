"""The default tag set shipped in data/tags/: valid and small, rebuilt by our command, imported on first start."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import load_config
from bot.core.service import GenerationService
from bot.prompts.tags import TagCategory, TagDatabase
from bot.prompts.tags.bundled import DEFAULT_COUNTS, DEFAULT_TAGS_FILE, ensure_tag_database
from bot.prompts.tags.importer import parse_rows

FULL_LIST = Path("/work/shared/data/danbooru.csv")
needs_full_list = pytest.mark.skipif(not FULL_LIST.is_file(), reason=f"{FULL_LIST} is not on this machine")

SMALL_CSV = """1girl,0,6008644,"1girls,sole_female"
highres,5,5256195,"high_res,high_resolution,hires"
solo,0,5000954,"female_solo,solo_female"
smile,0,4000000,
wlop,1,9000,"wang_ling"
ebifurya,1,8000,
nameless_artist,1,10,
hatsune_miku,4,106634,"/hm,miku"
hakurei_reimu,4,90000,reimu
obscure_girl,4,3,
touhou,3,900000,
vocaloid,3,300000,
"""


def test_the_shipped_file_is_valid_small_and_holds_the_top_of_each_category() -> None:
    data = DEFAULT_TAGS_FILE.read_bytes()
    assert len(data) < 3 * 1024 * 1024  # a few MB at most, compressed
    assert data[:2] == b"\x1f\x8b"
    rows = parse_rows(DEFAULT_TAGS_FILE)
    by_category = {c: [r for r in rows if r.category == c] for c in TagCategory}
    for category, limit in DEFAULT_COUNTS.items():
        assert 0 < len(by_category[category]) <= limit
    names = {r.name: r for r in rows}
    for name, number in [("hatsune_miku", 4), ("wlop", 1), ("1girl", 0), ("touhou", 3), ("highres", 5)]:
        assert int(names[name].category) == number
    assert "naked" in names["nude"].aliases  # aliases are kept
    assert (DEFAULT_TAGS_FILE.parent / "README.md").is_file()
    assert "MIT License" in (DEFAULT_TAGS_FILE.parent / "LICENSE").read_text(encoding="utf-8")


@needs_full_list
def test_the_shipped_file_is_what_our_command_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "top.csv.gz"
    assert main(["tags", "build-default", str(FULL_LIST), str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(DEFAULT_TAGS_FILE.read_bytes()).digest()


def test_build_default_picks_the_most_used_of_each_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "full.csv"
    src.write_text(SMALL_CSV, encoding="utf-8")
    out = tmp_path / "tags" / "top.csv.gz"
    args = ["--general", "2", "--artists", "2", "--characters", "1", "--copyrights", "1", "--meta", "0"]
    assert main(["tags", "build-default", str(src), str(out), *args]) == 0
    assert "wrote 6 tags" in capsys.readouterr().out
    text = gzip.decompress(out.read_bytes()).decode()
    assert text.splitlines() == [
        '1girl,0,6008644,"1girls,sole_female"',
        'solo,0,5000954,"female_solo,solo_female"',
        "touhou,3,900000,",
        'hatsune_miku,4,106634,"/hm,miku"',
        "wlop,1,9000,wang_ling",
        "ebifurya,1,8000,",
    ]
    first = out.read_bytes()
    assert main(["tags", "build-default", str(src), str(out), *args]) == 0
    assert out.read_bytes() == first  # reproducible: no time stamp in the gzip header


def test_build_default_refuses_a_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "not-tags.csv"
    src.write_text("hello world\nthis is not,a tag list\n", encoding="utf-8")
    out = tmp_path / "top.csv.gz"
    assert main(["tags", "build-default", str(src), str(out)]) == 2
    assert "does not look like a tag-autocomplete CSV" in capsys.readouterr().err
    assert not out.exists()


def test_a_damaged_gzip_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "broken.csv.gz"
    src.write_bytes(gzip.compress(SMALL_CSV.encode())[:-20])
    assert main(["tags", "build-default", str(src), str(tmp_path / "o.csv.gz")]) == 2
    assert "damaged gzip" in capsys.readouterr().err


async def test_a_fresh_data_dir_gets_the_default_set_at_start(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "data"\n', encoding="utf-8")
    config = load_config(path)
    assert not config.tags_db.exists()
    service = GenerationService(config)
    await service.start()
    try:
        assert isinstance(service.tags, TagDatabase)
        artists = [m.name for m in service.tags.search("wl", TagCategory.ARTIST)]
        assert "wlop" in artists
        assert next(m.name for m in service.tags.search("hatsune", TagCategory.CHARACTER)) == "hatsune_miku"
    finally:
        await service.close()
    assert config.tags_db.is_file()
    assert not list(config.tags_db.parent.glob("*.first-start"))


async def test_an_existing_database_is_never_replaced_at_start(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "data"\n', encoding="utf-8")
    config = load_config(path)
    src = tmp_path / "mine.csv"
    src.write_text("my_own_tag,0,5,\n", encoding="utf-8")
    assert main(["tags", "import", str(src), "--config", str(path)]) == 0
    service = GenerationService(config)
    await service.start()
    try:
        assert isinstance(service.tags, TagDatabase) and len(service.tags) == 1
    finally:
        await service.close()


async def test_import_default_false_leaves_a_fresh_dir_without_tags(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "data"\n[tags]\nimport_default = false\n', encoding="utf-8")
    config = load_config(path)
    service = GenerationService(config)
    await service.start()
    try:
        assert service.tags is None
    finally:
        await service.close()
    assert not config.tags_db.exists()


def test_ensure_leaves_no_file_when_the_import_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"not,a,tag,list,at,all\n" * 10))
    db = tmp_path / "tags.sqlite"
    assert ensure_tag_database(db, bad) is None  # logged; the start goes on without autocomplete
    assert "does not look like" in caplog.text
    assert not db.exists() and not list(tmp_path.glob("*.first-start"))
    assert ensure_tag_database(db, tmp_path / "missing.csv.gz") is None and not db.exists()
