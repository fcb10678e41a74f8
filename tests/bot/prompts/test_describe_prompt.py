"""The tagger's tags as a prompt of each model (bot/prompts/describe.py): the dialect's order and spelling,
and a prompt that the builder reads back unchanged when the button submits it."""

from __future__ import annotations

import pytest

from bot.prompts.builder import PromptChoices, build_prompt
from bot.prompts.describe import describe_prompt
from bot.prompts.dialects import available_dialects, load_dialect
from inference.tagger import TagResult

RESULT = TagResult(
    "general",
    {"general": 0.9, "sensitive": 0.1, "questionable": 0.01, "explicit": 0.0},
    general=[("smile", 0.95), ("looking_at_viewer", 0.9), ("1girl", 0.8), ("^_^", 0.6), ("hat_(object)", 0.5)],
    characters=[("ganyu_(genshin_impact)", 0.9), ("hatsune_miku", 0.86)],
)
EXPECTED = "1girl, ganyu \\(genshin impact\\), hatsune miku, smile, looking at viewer, ^_^, hat \\(object\\)"


@pytest.mark.parametrize("dialect_id", available_dialects())
def test_count_then_characters_then_general_in_the_dialects_spelling(dialect_id: str) -> None:
    assert describe_prompt(load_dialect(dialect_id), RESULT) == EXPECTED


@pytest.mark.parametrize("dialect_id", available_dialects())
def test_the_builder_reads_the_prompt_back(dialect_id: str) -> None:
    """What the button submits: the same tags in the same order (no tag database needed)."""
    dialect = load_dialect(dialect_id)
    rebuilt = build_prompt(dialect, PromptChoices(describe_prompt(dialect, RESULT))).prompt
    assert EXPECTED in rebuilt


def test_weight_like_names_stay_names() -> None:
    """`(o)_(o)` and `[name]` are tags, never read as weights."""
    result = TagResult("general", {}, general=[("(o)_(o)", 0.9), ("[text]", 0.8)], characters=[])
    prompt = describe_prompt(load_dialect("animagine-xl-4.0"), result)
    assert prompt == "\\(o\\) \\(o\\), \\[text\\]"
    # Submitted, both are read as names (one tag each), as when a user types them escaped.
    submitted = build_prompt(load_dialect("anima"), PromptChoices(prompt, quality="none"))
    assert submitted.prompt == "\\(o\\) \\(o\\), [text]"


def test_the_lowest_general_tags_go_first_when_too_long() -> None:
    general = [(f"tag_number_{i:03d}", 0.9 - i / 1000) for i in range(200)]
    result = TagResult("general", {}, general=general, characters=[("hatsune_miku", 0.9)])
    prompt = describe_prompt(load_dialect("anima"), result, limit=100)
    assert len(prompt) <= 100 and prompt.startswith("hatsune miku, tag number 000, tag number 001")
    assert "tag number 199" not in prompt


def test_no_tags_no_prompt() -> None:
    assert describe_prompt(load_dialect("anima"), TagResult("explicit", {}, general=[], characters=[])) == ""
