"""The LoRAs a request asks for (pure): the `lora` option ("name, other:0.6") and WebUI's `<lora:name:0.8>` in the
prompt, checked against the library (inference/loras.py) for the request's model, and the trigger words added.

Texts arrive normalized (bot.prompts.policy.normalize_text); names are looked up folded (inference.loras.lora_key),
so `Pixel Art`, `pixel art` and `ｐｉｘｅｌ art` are one LoRA. A LoRA named twice counts once, at the last weight
given. Every refusal is a UserError with a message key; nothing is changed then.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.core.errors import UserError
from inference.loras import LoraEntry, LoraLibrary, lora_key
from inference.types import LoraWeight

DEFAULT_MAX_LORAS = 3
DEFAULT_MAX_WEIGHT = 2.0  # weights from -max to +max (negative weights are how "slider" LoRAs are used)
MAX_LISTED = 15  # LoRA names quoted in a refusal
# <lora:name> or <lora:name:weight> (WebUI); anything else between `<lora:` and `>` is refused, not ignored.
PROMPT_LORA = re.compile(r"<\s*lora\s*:([^<>]*)>", re.IGNORECASE)
_COMMAS = re.compile(r"\s*,[\s,]*")


@dataclass(frozen=True)
class LoraAsk:
    """One LoRA as the user wrote it: a name and an optional weight."""

    name: str
    weight: float | None = None


@dataclass(frozen=True)
class ChosenLora:
    entry: LoraEntry
    weight: float

    def stored(self) -> LoraWeight:
        return self.entry.at(self.weight)

    def option(self) -> str:
        """How the lora option writes it back (for the stored request): name:weight."""
        return f"{self.entry.name}:{_number(self.weight)}"


def _number(value: float) -> str:
    return f"{value:g}"


def _weight(text: str, whole: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError("lora_bad_syntax", value=whole) from None
    if not math.isfinite(value):
        raise UserError("lora_bad_syntax", value=whole)
    return value


def _ask(item: str, whole: str) -> LoraAsk:
    name, colon, weight = item.rpartition(":") if ":" in item else (item, "", "")
    name = " ".join(name.split())
    if not name or ":" in name:
        raise UserError("lora_bad_syntax", value=whole)
    return LoraAsk(name, _weight(weight, whole) if colon else None)


def parse_lora_option(text: str | None) -> list[LoraAsk]:
    """The lora option: names separated by commas, each with an optional `:weight`. Empty items are skipped."""
    if not text:
        return []
    return [_ask(item.strip(), text) for item in text.split(",") if item.strip()]


def extract_prompt_loras(prompt: str) -> tuple[str, list[LoraAsk]]:
    """WebUI's `<lora:name>` / `<lora:name:weight>` taken out of the prompt: (the prompt without them, the asks).
    The commas and spaces around a removed tag are tidied (`a, <lora:x>, b` -> `a, b`)."""
    asks: list[LoraAsk] = []

    def take(match: re.Match[str]) -> str:
        asks.append(_ask(match.group(1).strip(), match.group(0)))
        return ","

    text = PROMPT_LORA.sub(take, prompt)
    if not asks:
        return prompt, []
    text = _COMMAS.sub(", ", text).strip(" ,")
    return text, asks


def resolve_loras(
    asks: Sequence[LoraAsk],
    library: LoraLibrary,
    family: str,
    model: str,
    *,
    max_loras: int = DEFAULT_MAX_LORAS,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    nsfw_allowed: bool = True,
) -> list[ChosenLora]:
    """Each ask found in the library and checked: it exists, is made for `family`, is allowed here (nsfw), has a
    weight within +-max_weight; at most `max_loras` different ones."""
    chosen: dict[str, ChosenLora] = {}
    for ask in asks:
        entry = library.get(ask.name)
        if entry is None:
            names = [e.name for e in library.for_family(family) if nsfw_allowed or not e.nsfw]
            options = ", ".join(names[:MAX_LISTED]) + (", ..." if len(names) > MAX_LISTED else "")
            raise UserError("lora_unknown", name=ask.name, model=model, options=options or "-")
        if entry.family != family:
            raise UserError("lora_wrong_family", name=entry.name, family=entry.family, model=model)
        if entry.nsfw and not nsfw_allowed:
            raise UserError("lora_nsfw", name=entry.name)
        weight = entry.weight if ask.weight is None else ask.weight
        if not -max_weight <= weight <= max_weight:
            raise UserError("lora_bad_weight", name=entry.name, value=weight, low=-max_weight, high=max_weight)
        chosen.pop(entry.key, None)  # named again: the last weight counts, in the place it was last named
        chosen[entry.key] = ChosenLora(entry, weight)
    if len(chosen) > max_loras:
        raise UserError("lora_too_many", count=len(chosen), limit=max_loras)
    return list(chosen.values())


def with_triggers(prompt: str, chosen: Sequence[ChosenLora]) -> str:
    """The prompt with each LoRA's trigger words where its sidecar says (start or end), each added once and only
    when the prompt does not hold it already."""
    present = {lora_key(part) for part in prompt.split(",")}
    start: list[str] = []
    end: list[str] = []
    for lora in chosen:
        if lora.entry.trigger_position == "none":
            continue
        for trigger in lora.entry.triggers:
            key = lora_key(trigger)
            if key and key not in present:
                present.add(key)
                (start if lora.entry.trigger_position == "start" else end).append(trigger)
    return ", ".join(part for part in (", ".join(start), prompt.strip(" ,"), ", ".join(end)) if part)


def lora_option(chosen: Sequence[ChosenLora]) -> str | None:
    """The chosen LoRAs as a lora option (the stored request: a reroll asks for the same ones)."""
    return ", ".join(lora.option() for lora in chosen) or None


def lora_completions(
    current: str, library: LoraLibrary, family: str, nsfw_allowed: bool, limit: int = 25
) -> list[tuple[str, str]]:
    """Autocomplete for the lora option: (label, value) pairs for the last comma-separated item typed, from the
    LoRAs of `family` that may be used here and are not named yet; the items before it are kept in the value.
    Labels show the default weight and the trigger words."""
    head, _, last = current.rpartition(",")
    named = {lora_key(item.rpartition(":")[0] if ":" in item else item) for item in head.split(",")}
    prefix = ", ".join(item.strip() for item in head.split(",") if item.strip())
    prefix = f"{prefix}, " if prefix else ""
    typed = lora_key(last.rpartition(":")[0] if ":" in last else last)
    hits = [
        entry
        for entry in library.for_family(family)
        if (nsfw_allowed or not entry.nsfw) and entry.key not in named and typed in entry.key
    ]
    hits.sort(key=lambda entry: not entry.key.startswith(typed))
    pairs: list[tuple[str, str]] = []
    for entry in hits:
        label = f"{entry.name} · {_number(entry.weight)}"
        if entry.triggers and entry.trigger_position != "none":
            label += " · " + ", ".join(entry.triggers)
        pairs.append((label, prefix + entry.name))
    return pairs[:limit]
