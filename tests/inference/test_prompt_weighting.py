from __future__ import annotations

import pytest

from inference.prompt_weighting import has_weighting, parse_weighted, strip_weighting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a, (cat:1.5), dog", [("a, ", 1.0), ("cat", 1.5), (", dog", 1.0)]),
        ("((x))", [("x", 1.21)]),
        ("[y]", [("y", round(1 / 1.1, 6))]),
        ("(@big chungus:0.1), 1girl", [("@big chungus", 0.1), (", 1girl", 1.0)]),
        ("a (b [c] d:1.2) e", [("a ", 1.0), ("b ", 1.2), ("c", round(1.2 / 1.1, 6)), (" d", 1.2), (" e", 1.0)]),
        ("honkai \\(series\\)", [("honkai (series)", 1.0)]),
        ("time 10:30", [("time 10:30", 1.0)]),
        ("x)", [("x)", 1.0)]),
        ("unclosed (a", [("unclosed ", 1.0), ("a", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_weighted(text) == expected


def test_escapes_alone_are_not_weighting() -> None:
    assert not has_weighting("firefly \\(honkai: star rail\\)")
    assert has_weighting("(smile:1.2)")
    assert strip_weighting("(smile:1.2), firefly \\(hsr\\)") == "smile, firefly (hsr)"
