"""Shared by the property and fuzz tests: bounded counts in CI, a long run by hand.

    python -m pytest -q --long tests/bot/prompts/test_properties.py \\
        tests/inference/test_prompt_weighting_properties.py tests/bot/test_cli_input.py \\
        tests/bot/test_cli_fuzz.py tests/cogs/test_generate_fuzz.py tests/bot/core/test_crash.py

`--long` (or ANIMEBOT_FUZZ_LONG=1) raises every count (hypothesis examples x50, Discord fuzz rounds x20,
crash rounds 5 → 40) and, for the Discord fuzz and the crash test, draws a new random seed (printed, so a
failure can be replayed with ANIMEBOT_FUZZ_SEED=<seed>)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

LONG = os.environ.get("ANIMEBOT_FUZZ_LONG") == "1"


def count(ci: int, factor: int = 50) -> int:
    return ci * factor if LONG else ci


def fuzz_settings(ci: int = 80) -> settings:
    """Hypothesis settings: `ci` examples (x50 in the long mode), no per-example deadline (the machine is
    shared; speed is not what these tests check)."""
    return settings(
        max_examples=count(ci),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Characters a hostile user reaches for: invisible and format characters, controls, surrogates, full-width
# and lookalike letters, combining marks, the weighting syntax and tag separators.
NASTY = [
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f", "\u3164", "\ufe0f", "\u202e", "\u202a",
    "\u200e", "\u200f", "\u2028", "\x00", "\x07", "\x1b", "\t", "\n", "\r", "\x7f", "\x85", "\ud800", "\udcff",
    "\udfff", "ｅ", "Ｅ", "ı", "İ", "е", "ο", "ѕ", "ᴇ", "𝐞", "ⓔ", "\u0301", "\ufdfa", "ß", "ﬁ", "(", ")", "[", "]",
    ":", "\\", ",", "，", "@", "_", " ", "\u3000", ".", "!", "-", "1", "9", "0", "e", "x", "p", "l", "i", "c", "t",
]
WORDS = [
    "1girl", "smile", "explicit", "nsfw", "questionable", "safe", "sensitive", "general", "rating", "rating:e",
    "masterpiece", "best quality", "score_9", "year 2019", "newest", "@artist", "artist_00", "(smile:1.2)",
    "[hat]", "honkai \\(series\\)", "a girl standing in the rain.", "explicit.", "rating_explicit",
]


def nasty_text(max_size: int = 60) -> st.SearchStrategy[str]:
    """Any text, weighted towards the characters and words above (lone surrogates included)."""
    char = st.one_of(st.sampled_from(NASTY), st.characters(), st.characters(categories=["Cs", "Cf", "Cc", "Mn"]))
    chunk = st.one_of(st.text(char, max_size=8), st.sampled_from(WORDS))
    return st.lists(chunk, max_size=max_size // 4).map("".join)
