"""A1111 prompt-weighting syntax, parsed into (text, weight) fragments. Pure Python.

    (text)      weight x1.1        ((text)) x1.21
    [text]      weight /1.1
    (text:1.3)  weight x1.3        (multiplies with enclosing brackets)
    \\( \\) \\[ \\] literal brackets (how Danbooru names such as `honkai \\(series\\)` are written)

Unbalanced brackets are read as literal text, as A1111 does for a stray opener. Weights are kept within
±MAX_WEIGHT (A1111 does not bound them; `(x:1e999)` or a few hundred nested `((...))` would give inf, then
NaN embeddings).
"""

from __future__ import annotations

import re
from typing import Any

_UP = 1.1
MAX_WEIGHT = 100.0
_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")

Fragment = tuple[str, float]


def has_weighting(text: str) -> bool:
    """True when parsing gives anything but one fragment of weight 1 (escapes alone do not count)."""
    fragments = parse_weighted(text)
    return any(weight != 1.0 for _, weight in fragments)


def parse_weighted(text: str) -> list[Fragment]:
    """Split `text` into fragments with their weights; adjacent fragments of equal weight are merged."""
    out: list[list[Any]] = []  # [text, weight] pairs under construction
    round_opens: list[int] = []  # indexes into `out` where a "(" group starts
    square_opens: list[int] = []

    def push(piece: str, weight: float = 1.0) -> None:
        out.append([piece, weight])

    def scale(start: int, factor: float) -> None:
        for item in out[start:]:
            item[1] = _bounded(item[1] * factor)

    for match in _TOKEN.finditer(text):
        token = match.group(0)
        explicit = match.group(1)
        if token.startswith("\\") and len(token) == 2:
            push(token[1])
        elif token == "(":
            round_opens.append(len(out))
        elif token == "[":
            square_opens.append(len(out))
        elif explicit is not None and round_opens:
            scale(round_opens.pop(), _bounded(float(explicit)))
        elif token == ")" and round_opens:
            scale(round_opens.pop(), _UP)
        elif token == "]" and square_opens:
            scale(square_opens.pop(), 1 / _UP)
        else:
            push(token)
    # Unclosed openers: A1111 still applies their weight to what follows.
    for start in round_opens:
        scale(start, _UP)
    for start in square_opens:
        scale(start, 1 / _UP)

    merged: list[Fragment] = []
    for piece, weight in out:
        weight = round(weight, 6)
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        elif piece:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def _bounded(weight: float) -> float:
    return max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))


def strip_weighting(text: str) -> str:
    """The plain text a weighted prompt says, with weights dropped and escapes resolved."""
    return "".join(piece for piece, _ in parse_weighted(text))
