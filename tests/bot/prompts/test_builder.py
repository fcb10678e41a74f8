"""The prompt builder: each model's dialect, tag order by category, choices, escaping, dedupe."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bot.prompts.builder import PromptChoices, PromptError, build_prompt, default_quality, split_top_level
from bot.prompts.dialects import load_dialect
from bot.prompts.tags import TagDatabase, import_csv

CARD_PROMPT = (
    "1girl, firefly \\(honkai: star rail\\), honkai \\(series\\), honkai: star rail, safe, casual, solo, "
    "looking at viewer, outdoors, smile, reaching towards viewer, night, masterpiece, high score, "
    "great score, absurdres"
)

# A small tag list in the community CSV format (name,category,post_count,"aliases").
TEST_CSV = """\
1girl,0,6000000,"1girls,sole_female"
solo,0,5000000,""
looking_at_viewer,0,3500000,"looking_at_camera"
smile,0,3400000,""
outdoors,0,700000,""
night,0,400000,""
casual,0,60000,""
reaching_towards_viewer,0,30000,"reaching_out"
absurdres,5,2000000,""
highres,5,5000000,""
firefly_(honkai:_star_rail),4,9000,"firefly_(hsr)"
honkai_(series),3,40000,""
honkai:_star_rail,3,80000,"hsr"
ebifurya,1,3000,""
yd_(orange_maru),1,2500,""
"""


@pytest.fixture(scope="module")
def tags(tmp_path_factory: pytest.TempPathFactory) -> TagDatabase:
    folder: Path = tmp_path_factory.mktemp("tags")
    csv = folder / "tags.csv"
    csv.write_text(TEST_CSV, encoding="utf-8")
    import_csv(csv, folder / "tags.sqlite")
    return TagDatabase.open(folder / "tags.sqlite")


def _shuffle_keeping_category_order(tokens: list[str], rng: random.Random) -> list[str]:
    """Any interleaving of the categories, each category's own tags kept in order (that order is the
    user's choice: the builder keeps it)."""
    groups = {
        "count": ["1girl"],
        "character": ["firefly (honkai: star rail)"],
        "series": ["honkai (series)", "honkai: star rail"],
        "general": [
            "casual", "solo", "looking at viewer", "outdoors", "smile", "reaching towards viewer", "night",
        ],
        "quality": ["masterpiece", "high score", "great score", "absurdres"],
    }
    assert sorted(t for group in groups.values() for t in group) == sorted(tokens)
    queues = {k: list(v) for k, v in groups.items()}
    out: list[str] = []
    while any(queues.values()):
        key = rng.choice([k for k, q in queues.items() if q])
        out.append(queues[key].pop(0))
    # Quality tags are model vocabulary with a fixed order: shuffle them freely too.
    return out


@pytest.mark.parametrize("seed", range(12))
def test_card_example_rebuilt_from_shuffled_tags(tags: TagDatabase, seed: int) -> None:
    tokens = [
        "1girl", "firefly (honkai: star rail)", "honkai (series)", "honkai: star rail", "casual", "solo",
        "looking at viewer", "outdoors", "smile", "reaching towards viewer", "night", "masterpiece",
        "high score", "great score", "absurdres",
    ]
    rng = random.Random(seed)
    shuffled = _shuffle_keeping_category_order(tokens, rng)
    quality = [t for t in shuffled if t in {"masterpiece", "high score", "great score", "absurdres"}]
    rng.shuffle(quality)
    it = iter(quality)
    shuffled = [next(it) if t in quality else t for t in shuffled]
    # Typed the way users type: underscores for some, unescaped parentheses.
    typed = [t.replace(" ", "_") if rng.random() < 0.5 else t for t in shuffled]
    built = build_prompt(
        load_dialect("animagine-xl-4.0"), PromptChoices(", ".join(typed), rating="safe"), tags
    )
    assert built.prompt == CARD_PROMPT


def test_same_choices_become_each_models_own_text() -> None:
    choices = PromptChoices("1girl, smile", quality="masterpiece", year="2019", rating="explicit",
                            artist="ebifurya")
    sdxl4 = build_prompt(load_dialect("animagine-xl-4.0"), choices).prompt
    sdxl3 = build_prompt(load_dialect("animagine-xl-3.1"), choices).prompt
    anima = build_prompt(load_dialect("anima"), choices).prompt
    assert sdxl4 == "1girl, explicit, year 2019, ebifurya, smile, masterpiece, high score, great score, absurdres"
    assert sdxl3 == (
        "masterpiece, best quality, very aesthetic, absurdres, 1girl, explicit, nsfw, recent, ebifurya, smile"
    )
    assert anima == "masterpiece, best quality, score_9, year 2019, explicit, 1girl, @ebifurya, smile"


@pytest.mark.parametrize(
    ("year", "v4", "v31", "anima"),
    [
        ("2019", "year 2019", "recent", "year 2019"),
        ("2024", "year 2024", "newest", "year 2024"),
        ("2005", "year 2005", "oldest", "year 2005"),
        ("2012", "year 2012", "early", "year 2012"),
        ("newest", "year 2023", "newest", "newest"),
        ("oldest", "year 2008", "oldest", "old"),
        ("year 2016", "year 2016", "mid", "year 2016"),
    ],
)
def test_year_mapping(year: str, v4: str, v31: str, anima: str) -> None:
    for dialect, expected in (("animagine-xl-4.0", v4), ("animagine-xl-3.1", v31), ("anima", anima)):
        built = build_prompt(load_dialect(dialect), PromptChoices("1girl", year=year))
        assert expected in built.prompt.split(", "), (dialect, built.prompt)


@pytest.mark.parametrize(
    ("rating", "v4", "v31"),
    [("safe", "safe", "safe"), ("general", "safe", "safe"), ("nsfw", "nsfw", "nsfw"),
     ("questionable", "nsfw", "nsfw"), ("explicit", "explicit", "explicit, nsfw"), ("E", "explicit", "explicit, nsfw")],
)
def test_rating_mapping(rating: str, v4: str, v31: str) -> None:
    for dialect, expected in (("animagine-xl-4.0", v4), ("animagine-xl-3.1", v31)):
        choices = PromptChoices("1girl", quality="none", rating=rating)
        assert build_prompt(load_dialect(dialect), choices).prompt == f"1girl, {expected}"


def test_quality_goes_front_on_31_and_anima_and_end_on_40() -> None:
    for dialect, first in (("animagine-xl-3.1", True), ("anima", True), ("animagine-xl-4.0", False)):
        parts = build_prompt(load_dialect(dialect), PromptChoices("1girl, smile", quality="worst")).prompt.split(", ")
        assert (parts[0] == "worst quality") is first, (dialect, parts)
        assert ("worst quality" in parts[-2:]) is not first, (dialect, parts)


def test_model_vocabulary_terms_are_accepted_as_quality() -> None:
    built = build_prompt(load_dialect("anima"), PromptChoices("1girl", quality="score_7, good quality"))
    assert built.prompt == "good quality, score_7, 1girl"
    with pytest.raises(PromptError) as err:
        build_prompt(load_dialect("animagine-xl-3.1"), PromptChoices("1girl", quality="high score"))
    assert err.value.key == "unknown_quality"


def test_tag_db_orders_categories_for_anima(tags: TagDatabase) -> None:
    built = build_prompt(
        load_dialect("anima"),
        PromptChoices("night, @ebifurya, honkai:_star_rail, firefly_(hsr), 1girl, score_9, safe, year_2020"),
        tags,
    )
    assert built.prompt == (
        "score_9, year 2020, safe, 1girl, firefly \\(honkai: star rail\\), honkai: star rail, @ebifurya, night"
    )


def test_anima_meta_tags_go_front_with_quality_year_and_safety(tags: TagDatabase) -> None:
    """The card's order: quality/meta/year/safety tags, then 1girl/1boy/1other, character, series, artist,
    general. absurdres and highres are meta tags (category 5) in the tag database."""
    built = build_prompt(
        load_dialect("anima"),
        PromptChoices("smile, absurdres, @ebifurya, 1girl, highres, night", quality="best", year="2020", rating="safe"),
        tags,
    )
    assert built.prompt == (
        "best quality, score_8, absurdres, highres, year 2020, safe, 1girl, @ebifurya, smile, night"
    )


def test_db_artist_gets_the_models_artist_format(tags: TagDatabase) -> None:
    anima = build_prompt(
        load_dialect("anima"), PromptChoices("smile, yd_(orange_maru), 1girl", quality="none"), tags
    )
    assert anima.prompt == "1girl, @yd \\(orange maru\\), smile"
    sdxl = build_prompt(
        load_dialect("animagine-xl-4.0"), PromptChoices("smile, @yd (orange maru), 1girl", quality="none"), tags
    )
    assert sdxl.prompt == "1girl, yd \\(orange maru\\), smile"


def test_natural_language_is_kept_intact(tags: TagDatabase) -> None:
    sentence = "A girl in a yellow_raincoat waves at the camera, smiling."
    built = build_prompt(load_dialect("anima"), PromptChoices(f"{sentence} night, 1girl", quality="best"), tags)
    assert built.prompt.startswith("best quality, score_8, 1girl")
    assert "A girl in a yellow_raincoat waves at the camera" in built.prompt


def test_weighted_tags_keep_their_weight_and_are_categorised(tags: TagDatabase) -> None:
    choices = PromptChoices("(smile:1.2), ((night)), 1girl, (masterpiece:0.9)")
    built = build_prompt(load_dialect("animagine-xl-4.0"), choices, tags)
    assert built.prompt == "1girl, (smile:1.2), ((night)), (masterpiece:0.9)"


def test_duplicates_removed_across_choices_and_free_text(tags: TagDatabase) -> None:
    built = build_prompt(
        load_dialect("animagine-xl-4.0"),
        PromptChoices(
            "1girl, 1girl, Smile, smile, safe, looking_at_viewer, looking at viewer", quality="none", rating="safe"
        ),
        tags,
    )
    assert built.prompt == "1girl, safe, smile, looking at viewer"  # the DB gives the canonical name


def test_without_a_tag_db_unknown_tags_keep_the_users_order() -> None:
    built = build_prompt(load_dialect("animagine-xl-4.0"), PromptChoices("night, hatsune_miku, masterpiece, 1girl"))
    assert built.prompt == "1girl, night, hatsune miku, masterpiece"


def test_unescaped_qualified_names_are_escaped_not_weighted() -> None:
    choices = PromptChoices("ganyu (genshin impact), 1girl", quality="none")
    built = build_prompt(load_dialect("animagine-xl-4.0"), choices)
    assert built.prompt == "1girl, ganyu \\(genshin impact\\)"


def test_negative_prompt_default_user_and_sfw() -> None:
    dialect = load_dialect("animagine-xl-4.0")
    built = build_prompt(dialect, PromptChoices("1girl", negative="bad_hands, extra_arms", sfw=True))
    assert built.negative_prompt.startswith(dialect.negative)
    assert built.negative_prompt.endswith("extra arms, nsfw, explicit")
    assert built.negative_prompt.count("bad hands") == 1
    none = build_prompt(dialect, PromptChoices("1girl", default_negative=False))
    assert none.negative_prompt == ""


def test_nsfw_request_drops_nsfw_from_the_default_negative_on_31() -> None:
    dialect = load_dialect("animagine-xl-3.1")
    assert "nsfw" in build_prompt(dialect, PromptChoices("1girl")).negative_prompt.split(", ")
    built = build_prompt(dialect, PromptChoices("1girl", rating="explicit"))
    assert "nsfw" not in built.negative_prompt.split(", ")
    assert built.ratings == {"explicit", "questionable"}


def test_ratings_found_in_free_text_are_reported() -> None:
    built = build_prompt(load_dialect("anima"), PromptChoices("1girl, explicit"))
    assert built.ratings == {"explicit"}
    assert build_prompt(load_dialect("anima"), PromptChoices("1girl")).ratings == frozenset()


@pytest.mark.parametrize(
    ("choices", "key"),
    [
        (PromptChoices("   "), "empty_prompt"),
        (PromptChoices("1girl", quality="divine"), "unknown_quality"),
        (PromptChoices("1girl", rating="spicy"), "unknown_rating"),
        (PromptChoices("1girl", year="someday"), "unknown_year"),
        (PromptChoices("1girl", year="1850"), "unknown_year"),
        (PromptChoices("1girl", year="2030"), "year_out_of_range"),
        (PromptChoices("1girl", artist="x" * 101), "bad_artist"),
    ],
)
def test_bad_choices_are_refused_with_a_key(choices: PromptChoices, key: str) -> None:
    with pytest.raises(PromptError) as err:
        build_prompt(load_dialect("animagine-xl-4.0"), choices)
    assert err.value.key == key
    assert str(err.value)


def test_split_keeps_weighted_groups_and_escapes_whole() -> None:
    assert split_top_level("a, (b, c:1.2), d \\, e, [f, g]") == ["a", "(b, c:1.2)", "d \\, e", "[f, g]"]


def test_year_option_reads_danbooru_spellings() -> None:
    dialect = load_dialect("anima")
    for value in ("year_2019", "Year  2019", "２０１９", " 2019 "):
        choices = PromptChoices("1girl", quality="none", year=value)
        assert build_prompt(dialect, choices).prompt == "year 2019, 1girl", value


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        ("animagine-xl-4.0", "1girl, smile, masterpiece, high score, great score, absurdres"),  # card: at the END
        ("animagine-xl-3.1", "masterpiece, best quality, very aesthetic, absurdres, 1girl, smile"),  # at the front
        ("anima", "masterpiece, best quality, score_7, 1girl, smile"),
    ],
)
def test_no_quality_picked_adds_the_models_recommended_quality_tags(dialect: str, expected: str) -> None:
    d = load_dialect(dialect)
    built = build_prompt(d, PromptChoices("smile, 1girl"))
    assert built.prompt == expected
    assert built.default_quality == d.default_quality == default_quality(d, PromptChoices("smile, 1girl"))
    assert built.default_quality and all(t in built.prompt for t in built.default_quality)


@pytest.mark.parametrize("dialect", ["animagine-xl-4.0", "animagine-xl-3.1", "anima"])
def test_none_turns_the_default_quality_off_and_a_choice_replaces_it(dialect: str) -> None:
    d = load_dialect(dialect)
    for none in ("none", "None", " NONE "):
        built = build_prompt(d, PromptChoices("smile, 1girl", quality=none))
        assert built.prompt == "1girl, smile" and built.default_quality == ()
    low = build_prompt(d, PromptChoices("smile, 1girl", quality="low"))
    assert low.default_quality == () and "masterpiece" not in low.prompt
    # Quality tags written in the prompt count as a choice too: nothing is added to them.
    own = build_prompt(d, PromptChoices("smile, 1girl, worst quality"))
    assert own.default_quality == () == default_quality(d, PromptChoices("smile, 1girl, worst quality"))
    assert "masterpiece" not in own.prompt
