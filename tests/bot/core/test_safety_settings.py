"""How a server's own rating-check choice combines with the config's [safety] (bot/core/safety_settings.py):
stricter choices apply, looser ones only where the bot owner allows it, and a choice stored while it was
allowed stops applying as soon as the config is tightened."""

from __future__ import annotations

import itertools

import pytest

from bot.core.safety_settings import SENSITIVE_CHOICES, SafetyChoice, effective, is_looser


@pytest.mark.parametrize(
    ("config_rate", "config_sensitive", "choice", "rate", "sensitive", "clamped"),
    [
        (True, "spoiler", None, True, "spoiler", False),
        (True, "spoiler", SafetyChoice("withhold"), True, "withhold", False),
        (True, "spoiler", SafetyChoice("post"), True, "spoiler", True),
        (True, "withhold", SafetyChoice("spoiler", True), True, "withhold", True),
        (True, "post", SafetyChoice(rate_results=False), True, "post", True),
        (False, "spoiler", SafetyChoice(rate_results=True), True, "spoiler", False),
        (False, "spoiler", SafetyChoice("post"), False, "spoiler", True),
        (False, "post", SafetyChoice("post", False), False, "post", False),
    ],
)
def test_a_server_is_never_looser_than_the_config(
    config_rate: bool, config_sensitive: str, choice: SafetyChoice | None, rate: bool, sensitive: str, clamped: bool
) -> None:
    got = effective(config_rate, config_sensitive, False, choice)  # type: ignore[arg-type]
    assert (got.rate_results, got.sensitive, got.clamped) == (rate, sensitive, clamped)
    assert got.choice == choice


def test_servers_may_loosen_only_when_the_config_says_so() -> None:
    choice = SafetyChoice("post", False)
    loose = effective(True, "withhold", True, choice)
    assert (loose.rate_results, loose.sensitive, loose.clamped) == (False, "post", False)
    # The bot owner tightens the config again: the stored choice no longer applies, and is kept.
    tight = effective(True, "withhold", False, choice)
    assert (tight.rate_results, tight.sensitive, tight.clamped) == (True, "withhold", True)


def test_looser_is_exactly_what_effective_clamps() -> None:
    for config_rate, config_sensitive, rate, sensitive in itertools.product(
        (True, False), SENSITIVE_CHOICES, (True, False, None), (*SENSITIVE_CHOICES, None)
    ):
        choice = SafetyChoice(sensitive, rate)
        assert is_looser(config_rate, config_sensitive, choice) == effective(
            config_rate, config_sensitive, False, choice
        ).clamped, (config_rate, config_sensitive, choice)
