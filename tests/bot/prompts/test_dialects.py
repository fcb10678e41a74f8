"""The dialect data files: complete, consistent with the model cards, and loadable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.prompts.dialects import DialectError, available_dialects, load_choices, load_dialect
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
        (1024, 1024),
        (1152, 896),
        (896, 1152),
        (1216, 832),
        (832, 1216),
        (1344, 768),
        (768, 1344),
        (1536, 640),
        (640, 1536),
    ]
    anima = load_dialect("anima")
    assert anima.negative == "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia"
    assert (anima.steps, anima.cfg, anima.artist_prefix) == (30, 4.0, "@")
    assert load_dialect("animagine-xl-3.1").rating_choices["explicit"] == "explicit, nsfw"


def test_missing_samplers_name_what_the_card_uses_and_diffusers_lacks() -> None:
    assert load_dialect("anima").missing_samplers == ("er_sde",)
    assert load_dialect("animagine-xl-4.0").missing_samplers == ()
    assert load_dialect("animagine-xl-3.1").missing_samplers == ()
    for dialect_id in available_dialects():
        assert not set(load_dialect(dialect_id).missing_samplers) & set(SAMPLERS)


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


# --- broken data files: one clear message naming the file and the key ----------------------------

REPO_DATA = Path(__file__).resolve().parents[3] / "data"


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(REPO_DATA / "models", data / "models")
    for name in ("choices.toml", "buckets.toml"):
        shutil.copy(REPO_DATA / name, data / name)
    return data


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "models/anima.toml",
            "steps = 30",
            "stepz = 30",
            ["generation.stepz: unknown key", "generation.steps: Field required"],
        ),
        (
            "models/anima.toml",
            "steps = 30",
            'steps = "30"',
            ["generation.steps: Input should be a valid integer (got '30')"],
        ),
        ("models/anima.toml", "cfg = 4.0", "cfg = inf", ["generation.cfg: Input should be a finite number"]),
        (
            "models/anima.toml",
            "escape_parentheses = true",
            "escape_parentheses = 1",
            ["prompt.escape_parentheses: Input should be a valid boolean"],
        ),
        ("models/anima.toml", 'name = "Anima"\n', "", ["name: Field required"]),
        ("models/anima.toml", 'family = "anima"', 'family = "sd15"', ["family: Input should be 'sdxl' or 'anima'"]),
        (
            "models/anima.toml",
            'quality = ["masterpiece",',
            'quality = [1, "masterpiece",',
            ["vocab.quality.0: Input should be a valid string (got 1)"],
        ),
        (
            "models/anima.toml",
            '"general", "text"]',
            '"general", "text", "extra"]',
            ["prompt.order: must list each of quality"],
        ),
        (
            "models/anima.toml",
            'missing_samplers = ["er_sde"]',
            'missing_samplers = ["er_sde", "er_sde"]',
            ["generation.missing_samplers: lists a sampler twice"],
        ),
        (
            "models/anima.toml",
            'missing_samplers = ["er_sde"]',
            'missing_samplers = [""]',
            ["generation.missing_samplers.0: String should have at least 1 character"],
        ),
        ("models/anima.toml", 'format = "year {year}"', 'format = "year"', ["year.format: must contain {year}"]),
        ("models/anima.toml", "min = 1990", "min = 2030", ["year: min (2030) is after max (2025)"]),
        (
            "models/anima.toml",
            "[choices.rating]",
            "[choices.ratings]",
            ["choices.ratings: unknown key", "choices.rating: Field required"],
        ),
        (
            "models/anima.toml",
            'buckets = "anima"',
            'buckets = "sd15"',
            ["generation.buckets: unknown bucket set 'sd15'"],
        ),
        (
            "models/anima.toml",
            'aspect = "1:1"',
            'aspect = "5:12"',
            ["generation.aspect: '5:12' is not one of the 'anima' buckets"],
        ),
        (
            "models/anima.toml",
            'worst = "worst quality, score_1"',
            'worst = "worst quality, score_1"\ndivine = "x"',
            ["choices.quality: unknown choice divine"],
        ),
        ("models/anima.toml", 'newest = "newest"', "", ["choices.period: lacks newest"]),
        ("models/anima.toml", "[generation]", "[generation\n", ["not valid TOML"]),
        (
            "choices.toml",
            'nsfw_ratings = ["questionable", "explicit"]',
            'nsfw_ratings = ["questionable", "xxx"]',
            ["(top level): nsfw_ratings names ratings that are not in rating: xxx"],
        ),
        (
            "choices.toml",
            "newest = [2021, 2024]",
            "newest = [2021]",
            ["periods.newest: List should have at least 2 items"],
        ),
        ("choices.toml", "quality = [", "qualities = [", ["qualities: unknown key", "quality: Field required"]),
        (
            "buckets.toml",
            '"1:1" = [1024, 1024]',
            '"1:1" = [1024, "1024"]',
            ["sdxl.1:1.1: Input should be a valid integer"],
        ),
        (
            "buckets.toml",
            '"9:7" = [1152, 896]',
            '"9:7" = [1152, 0]',
            ["sdxl.9:7.1: Input should be greater than or equal to 64"],
        ),
    ],
)
def test_a_broken_data_file_is_one_clear_message(
    data_copy: Path, file: str, old: str, new: str, expected: list[str]
) -> None:
    path = data_copy / file
    edit(path, old, new)
    with pytest.raises(DialectError) as info:
        load_dialect("anima" if file.startswith("models/") else "animagine-xl-4.0", data_copy)
    message = str(info.value)
    assert "Traceback" not in message and "pydantic" not in message and "https://" not in message
    lines = message.splitlines()
    assert len(lines) == len(expected), message
    assert all(line.startswith(f"{path}: ") for line in lines), message
    for want in expected:
        assert any(want in line for line in lines), message


def test_invalid_utf8_in_a_data_file(data_copy: Path) -> None:
    path = data_copy / "models" / "anima.toml"
    path.write_bytes(path.read_bytes().replace(b"Anima", b"An\xffma", 1))
    with pytest.raises(DialectError, match=f"^{path}: not valid UTF-8$"):
        load_dialect("anima", data_copy)


def test_a_value_out_of_range(data_copy: Path) -> None:
    edit(data_copy / "models" / "anima.toml", "steps = 30", "steps = 0")
    with pytest.raises(DialectError, match=r"generation\.steps: Input should be greater than or equal to 1"):
        load_dialect("anima", data_copy)


def test_a_default_quality_outside_the_vocabulary_is_refused(data_copy: Path) -> None:
    edit(data_copy / "models" / "anima.toml", 'default_quality = "masterpiece, best quality, score_7"',
         'default_quality = "masterpiece, shiny"')
    with pytest.raises(DialectError, match=r"prompt\.default_quality: shiny not in the quality vocabulary"):
        load_dialect("anima", data_copy)


@pytest.mark.parametrize("dialect_id", ["animagine-xl-3.1", "animagine-xl-4.0", "anima"])
def test_every_dialect_has_a_default_quality_from_its_card(dialect_id: str) -> None:
    expected = {
        "animagine-xl-3.1": ("masterpiece", "best quality", "very aesthetic", "absurdres"),
        "animagine-xl-4.0": ("masterpiece", "high score", "great score", "absurdres"),
        "anima": ("masterpiece", "best quality", "score_7"),
    }
    assert load_dialect(dialect_id).default_quality == expected[dialect_id]
