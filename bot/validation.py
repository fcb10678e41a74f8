"""One readable line per pydantic validation error, naming the file and the key (config and data files)."""

from __future__ import annotations

from pydantic import ValidationError


def format_errors(error: ValidationError, where: str) -> str:
    """`where: key.path: what is wrong (got value)`, one line per error."""
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {_short(e['input'])})"
        lines.append(f"{where}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
