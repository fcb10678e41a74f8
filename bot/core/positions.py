"""What a user is shown of a waiting job's place in the queue: the exact position near the front, a coarse
"about N" further back. Pure functions, no I/O.

Why coarse: when a job starts, every waiting job moves up one. Shown exactly, that is one announcement and one
message edit per waiting job per start (the fan-out issue 13 measured: 13.7 edits per job with 1,000 queued).
Shown coarsely, only the jobs that cross a step boundary change what they show: a few dozen per start
whatever the length of the queue (10 exact positions, then about nine boundaries per decade).

The rounding: positions 1..EXACT_POSITIONS are exact. Beyond, a position is rounded UP to a "nice" step that
grows with the distance (10 up to 100, 50 up to 500, 100 up to 1,000, 500 up to 5,000, 1,000 up to 10,000 ...,
so about one or two significant digits): "about 20" means 11..20, "about 150" means 101..150. Up, so that the
number shown never makes the wait look shorter than it is, and so that a job moving forward sees the number
fall as soon as it enters the next bucket.

Flip-flopping: jobs come (a newcomer's job is served first: the jobs behind it move back one) and go (a start
moves everyone up one), so a job sitting at a bucket's edge would switch between two values at every
come-and-go. `shown_position` therefore keeps what was shown (`previous`) while the exact position stays in
that value's window (`window`): from the bucket's low end (moving forward past it changes the shown value at
once) up to a fifth of a step beyond its high end (moving back changes it only when the job has clearly moved).
"""

from __future__ import annotations

EXACT_POSITIONS = 10  # positions 1..10 are shown exactly: the front, where every move matters to its user
BACK_MARGIN_FRACTION = 5  # moving back: a shown value is kept until the job is a step / 5 past it


def step_for(position: int) -> int:
    """The rounding step for a position beyond the exact ones: 10 up to 100, 50 up to 500, 100 up to 1,000,
    500 up to 5,000, and so on (1-5-10 steps, a tenth of the decade's top or less)."""
    step = 10
    while True:
        if position <= step * 10:
            return step
        if position <= step * 50:
            return step * 5
        step *= 10


def coarse(position: int) -> int:
    """The shown value of an exact position (1 = next), without regard to what was shown before: the position
    itself in the front, else the position rounded up to its step."""
    if position <= EXACT_POSITIONS:
        return max(1, position)
    step = step_for(position)
    return -(-position // step) * step


def is_exact(shown: int) -> bool:
    """Whether a shown value is an exact position (else it reads "about N")."""
    return shown <= EXACT_POSITIONS


def window(shown: int) -> tuple[int, int]:
    """The exact positions (low, high) for which `shown` stays what a job shows (see the module's doc on
    flip-flopping). An exact value's window is itself."""
    if is_exact(shown):
        return shown, shown
    step = step_for(shown)
    low = max(EXACT_POSITIONS + 1, shown - step + 1)
    return low, shown + max(1, step // BACK_MARGIN_FRACTION)


def shown_position(position: int, previous: int | None = None) -> int:
    """What a job at exact `position` shows, given what it showed before (`previous`; None: nothing yet)."""
    if previous is not None:
        low, high = window(previous)
        if low <= position <= high:
            return previous
    return coarse(position)
