"""The tagger's tags of an image as a prompt of one model (pure): characters in the model's character
slot, count tags, general tags, in the dialect's order and spelling (spaces, escaped parentheses), through
the prompt builder with the tagger's own categories. The rating is not part of it (the image's rating is
shown beside it; /generate's rating option and the channel decide what may be made)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.prompts.builder import PromptChoices, PromptError, TagInfo, build_prompt
from bot.prompts.dialects import Dialect
from inference.tagger import CHARACTER_CATEGORY, GENERAL_CATEGORY, TagResult

MAX_PROMPT_CHARS = 1500  # room in a 2000-character message, and under /generate's prompt limit
_BRACKETS = str.maketrans({"(": r"\(", ")": r"\)", "[": r"\[", "]": r"\]"})
_SQUARE = re.compile(r"(?<!\\)([\[\]])")  # an unescaped [ or ]: a weight to the prompt parser


@dataclass(frozen=True)
class _Tag:
    name: str
    category: int


class _TaggerCategories:
    """A TagLookup answering with the tagger's categories."""

    def __init__(self, tags: Mapping[str, int]) -> None:
        self.tags = tags

    def lookup(self, names: Iterable[str]) -> Mapping[str, TagInfo]:
        return {n: _Tag(n, self.tags[n]) for n in names if n in self.tags}


def _literal(name: str) -> str:
    """A tag name the builder reads as the name itself, never as a weight: `ganyu_\\(genshin_impact\\)`."""
    return name.translate(_BRACKETS)


def describe_prompt(dialect: Dialect, result: TagResult, limit: int = MAX_PROMPT_CHARS) -> str:
    """The prompt of `result`'s characters and general tags for `dialect` ("" when there are none), at
    most `limit` characters: the lowest-scoring general tags are left out first."""
    tags = [(n, CHARACTER_CATEGORY) for n, _ in result.characters] + [(n, GENERAL_CATEGORY) for n, _ in result.general]
    tags = [(n, c) for n, c in tags if n.strip() and "," not in n]
    categories = dict(tags)
    while tags:
        text = ", ".join(_literal(n) for n, _ in tags)
        try:
            # The tags alone: the model's default quality tags are added when the prompt is queued (and said so).
            choices = PromptChoices(text, quality="none", default_negative=False)
            prompt = build_prompt(dialect, choices, _TaggerCategories(categories))
        except PromptError:
            return ""
        text = _SQUARE.sub(r"\\\1", prompt.prompt)  # `[text]` is a tag name, not a lowered weight
        if len(text) <= limit:
            return text
        tags.pop()  # general tags come last, lowest score last
    return ""
