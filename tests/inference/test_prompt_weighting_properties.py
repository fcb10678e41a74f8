"""Property tests of the A1111 weighting parser (see tests/fuzz.py for the long mode): any text parses
without an error, into fragments that spell its plain text, with finite bounded weights."""

from __future__ import annotations

import math

from hypothesis import example, given
from hypothesis import strategies as st

from inference.prompt_weighting import MAX_WEIGHT, has_weighting, parse_weighted, strip_weighting
from tests.fuzz import fuzz_settings, nasty_text

SYNTAX = st.text(st.sampled_from("()[]:\\ab 1.9,"), max_size=80)


@fuzz_settings(150)
@given(st.one_of(nasty_text(), SYNTAX))
@example("(x:" + "9" * 400 + ")")  # inf before
@example("(" * 320 + "x" + ":10)" * 320)  # 10**320: inf before
@example("(" * 320 + "(x" + ":10)" * 320 + ":0)")  # inf * 0: NaN before
def test_any_text_parses_into_bounded_weights(text: str) -> None:
    fragments = parse_weighted(text)
    assert fragments
    assert all(math.isfinite(w) and -MAX_WEIGHT <= w <= MAX_WEIGHT for _, w in fragments), fragments
    assert "".join(piece for piece, _ in fragments) == strip_weighting(text)
    assert has_weighting(text) == any(w != 1.0 for _, w in fragments)


@fuzz_settings(100)
@given(st.text(st.characters(exclude_characters="()[]:\\"), max_size=80))
def test_text_without_syntax_is_one_plain_fragment(text: str) -> None:
    assert parse_weighted(text) == [(text, 1.0)]
    assert not has_weighting(text)
