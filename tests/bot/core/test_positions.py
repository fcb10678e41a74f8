"""The shown position (bot/core/positions.py): exact in the front, "about N" beyond, never flip-flopping."""

from __future__ import annotations

from bot.core.messages import render
from bot.core.positions import EXACT_POSITIONS, coarse, is_exact, shown_position, step_for, window


def test_the_front_is_exact_and_the_rest_rounded_up_to_a_nice_step() -> None:
    assert [coarse(p) for p in range(1, EXACT_POSITIONS + 1)] == list(range(1, EXACT_POSITIONS + 1))
    assert [coarse(p) for p in (11, 19, 20, 21, 99, 100, 101, 149, 151, 500, 501, 999, 1001, 12_345, 99_999)] == [
        20, 20, 20, 30, 100, 100, 150, 150, 200, 500, 600, 1000, 1500, 15_000, 100_000,
    ]
    assert all(coarse(p) >= p for p in range(1, 200_000, 7))  # never nearer the front than the job is
    assert all(coarse(p) - p < step_for(p) for p in range(EXACT_POSITIONS + 1, 200_000, 7))
    assert all(coarse(coarse(p)) == coarse(p) for p in range(1, 200_000, 7))  # a shown value shows itself
    assert is_exact(EXACT_POSITIONS) and not is_exact(coarse(EXACT_POSITIONS + 1))


def test_a_shown_value_is_kept_within_its_window() -> None:
    for position in range(1, 50_000, 3):
        shown = coarse(position)
        low, high = window(shown)
        assert low <= position <= high
        assert shown_position(position, shown) == shown
    assert window(7) == (7, 7)
    assert window(50) == (41, 52)  # 41..50 is the bucket; 51 and 52 are the margin moving back
    assert window(20) == (EXACT_POSITIONS + 1, 22)


def test_coming_and_going_at_a_boundary_does_not_flip_flop() -> None:
    """A job at the edge of a bucket, with jobs coming (it moves back one) and going (forward one): what it
    shows changes once, when it moves forward into the next bucket, not at every come-and-go."""
    shown = shown_position(41)
    assert shown == 50
    values = [shown]
    for position in (40, 41, 40, 41, 40, 41, 42, 40):
        shown = shown_position(position, shown)
        values.append(shown)
    assert values == [50, 40, 40, 40, 40, 40, 40, 40, 40]
    assert shown_position(43, 40) == 50  # clearly moved back: the bucket it is in now
    assert shown_position(10, 20) == 10  # into the front: exact at once
    assert shown_position(9, 10) == 9 and shown_position(11, 10) == 20  # exact values change at every move


def test_both_languages_say_about() -> None:
    english = render("queued_about", "en", job_id=3, position=150, prompt="1girl")
    assert english == "#3 queued (position about 150): 1girl"
    assert "約150番目" in render("queued_about", "ja", job_id=3, position=150, prompt="1girl")
