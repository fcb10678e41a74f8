"""The dialect data files: complete, consistent with the model cards, and loadable."""

from __future__ import annotations

import pytest

from bot.prompts.dialects import available_dialects, load_choices, load_dialect
from inference.samplers import SAMPLERS


def test_three_dialects_ship() -> None:
    assert available_dialects() == ["anima", "animagine-xl-3.1", "animagine-xl-4.0"]


@pytest.mark.parametrize("dialect_id", ["anima", "animagine-xl-3.1", "animagine-xl-4.0"])
def test_dialect_is_consistent(dialect_id: str) -> None:
    d = load_dialect(dialect_id)
    assert d.sampler in SAMPLERS and d.family in SAMPLERS[d.sampler].families
    choices = load_choices()
    assert set(d.quality_choices) == set(choices.quality)
    terms = {t.lower() for t in d.quality_section_terms}
    for text in d.quality_choices.values():
        assert {t.strip() for t in text.split(",")} <= terms
    for text in d.rating_choices.values():
        assert {t.strip() for t in text.split(",")} <= set(d.rating_terms)
    for text in d.period_choices.values():
        assert text in d.period_terms or text.startswith("year ")
    assert d.bucket(d.default_aspect) is not None


def test_card_values() -> None:
    v4 = load_dialect("animagine-xl-4.0")
    assert (v4.steps, v4.cfg) == (28, 5.0)
    assert v4.quality_choices["masterpiece"] == "masterpiece, high score, great score, absurdres"
    assert [(b.width, b.height) for b in v4.buckets] == [
        (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
        (1344, 768), (768, 1344), (1536, 640), (640, 1536),
    ]
    anima = load_dialect("anima")
    assert anima.negative == "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia"
    assert (anima.steps, anima.cfg, anima.artist_prefix) == (30, 4.0, "@")
    assert load_dialect("animagine-xl-3.1").rating_choices["explicit"] == "explicit, nsfw"


def test_formatting() -> None:
    anima = load_dialect("anima")
    assert anima.format_artist("yd_(orange_maru)") == "@yd \\(orange maru\\)"
    assert anima.format_artist("@ebifurya") == "@ebifurya"
    assert load_dialect("animagine-xl-4.0").format_artist("@ebifurya") == "ebifurya"
    assert anima.format_tag("^_^") == "^_^"
    assert anima.format_tag("looking_at_viewer") == "looking at viewer"
    assert anima.format_tag("already \\(escaped\\)") == "already \\(escaped\\)"


def test_year_to_period() -> None:
    choices = load_choices()
    assert choices.period_of_year(2019) == "recent"
    assert choices.period_of_year(1999) == "oldest"
    assert choices.period_of_year(2030) == "newest"
