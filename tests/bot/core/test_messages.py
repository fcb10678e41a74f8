"""The message catalog: both languages have every key with the same placeholders; render picks the
language of the Discord locale and falls back to English."""

from __future__ import annotations

import string

import pytest

from bot.core.messages import CATALOG, language, render


def placeholders(template: str) -> set[tuple[str, str | None, str | None]]:
    """The fields of a template: (name, conversion, format spec)."""
    return {
        (field, conversion, spec)
        for _, field, spec, conversion in string.Formatter().parse(template)
        if field is not None
    }


def test_both_languages_have_every_key() -> None:
    assert set(CATALOG) == {"en", "ja"}
    assert set(CATALOG["ja"]) == set(CATALOG["en"])


@pytest.mark.parametrize("key", sorted(CATALOG["en"]))
def test_same_placeholders_in_both_languages(key: str) -> None:
    assert placeholders(CATALOG["ja"][key]) == placeholders(CATALOG["en"][key])
    for markup in ("<t:", ":R>", ":f>", "\n"):
        assert CATALOG["ja"][key].count(markup) == CATALOG["en"][key].count(markup), markup


def test_japanese_entries_are_translated() -> None:
    same = [k for k, v in CATALOG["ja"].items() if v == CATALOG["en"][k]]
    assert same == ["model_list_line"]  # nothing but placeholders and markers


def test_render_picks_the_language_of_the_locale() -> None:
    assert render("job_not_found", "ja", job_id=3) == "ジョブ #3 は見つかりません。"
    assert render("job_not_found", "en-US", job_id=3) == "There is no job #3."
    assert render("job_not_found", "fr", job_id=3) == "There is no job #3."
    assert render("job_not_found", "zh-CN", job_id=3) == "There is no job #3."
    assert render("deleted") == "Deleted."
    assert language("ja") == "ja" and language("en-GB") == "en" and language("pt-BR") == "en"
