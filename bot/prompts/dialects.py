"""Model dialects: each model's vocabularies, tag order and defaults, read from data/ (pure code).

A dialect answers "what does this model call X?": the same user choice (quality "masterpiece",
year 2019, rating "explicit", an artist) becomes different text per model.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

# Prompt sections a dialect can order. "text" holds natural-language parts.
SECTIONS = ("quality", "year", "rating", "count", "character", "series", "artist", "general", "meta", "text")


class DialectError(Exception):
    """A dialect data file is missing or malformed (a packaging/developer error, not user input)."""


@dataclass(frozen=True)
class Bucket:
    aspect: str  # "13:19"
    width: int
    height: int

    @property
    def orientation(self) -> str:
        if self.width == self.height:
            return "square"
        return "portrait" if self.height > self.width else "landscape"

    @property
    def label(self) -> str:
        return f"{self.orientation} {self.aspect} ({self.width}x{self.height})"


@dataclass(frozen=True)
class Choices:
    """The model-neutral choices of data/choices.toml."""

    quality: tuple[str, ...]
    rating: tuple[str, ...]
    nsfw_ratings: frozenset[str]
    rating_aliases: dict[str, str]
    periods: dict[str, tuple[int, int]]

    def canonical_rating(self, value: str) -> str | None:
        key = value.strip().lower()
        key = self.rating_aliases.get(key, key)
        return key if key in self.rating else None

    def period_of_year(self, year: int) -> str:
        for name, (first, last) in self.periods.items():
            if first <= year <= last:
                return name
        # Outside every range: the nearest end.
        newest = max(self.periods.items(), key=lambda item: item[1][1])
        oldest = min(self.periods.items(), key=lambda item: item[1][0])
        return newest[0] if year > newest[1][1] else oldest[0]


@dataclass(frozen=True)
class Dialect:
    id: str
    name: str
    family: str
    steps: int
    cfg: float
    sampler: str
    default_aspect: str
    negative: str
    nsfw_negative: str
    buckets: tuple[Bucket, ...]
    order: tuple[str, ...]
    artist_prefix: str
    escape_parentheses: bool
    quality_terms: tuple[str, ...]
    score_terms: tuple[str, ...]
    aesthetic_terms: tuple[str, ...]
    quality_meta_terms: tuple[str, ...]
    rating_terms: tuple[str, ...]
    period_terms: tuple[str, ...]
    year_format: str | None
    year_min: int
    year_max: int
    quality_choices: dict[str, str]
    rating_choices: dict[str, str]
    period_choices: dict[str, str]
    choices: Choices

    # --- vocabularies -------------------------------------------------------------------------

    @property
    def quality_section_terms(self) -> tuple[str, ...]:
        """Every term that belongs in the quality section, in the order the model writes them."""
        return self.quality_terms + self.score_terms + self.aesthetic_terms + self.quality_meta_terms

    def bucket(self, aspect: str) -> Bucket | None:
        return next((b for b in self.buckets if b.aspect == aspect), None)

    def nearest_bucket(self, width: int, height: int) -> Bucket:
        """The bucket whose aspect ratio is closest to width:height (log-ratio distance)."""
        target = math.log(width / height)
        return min(self.buckets, key=lambda b: abs(math.log(b.width / b.height) - target))

    @property
    def default_bucket(self) -> Bucket:
        bucket = self.bucket(self.default_aspect)
        assert bucket is not None  # checked at load
        return bucket

    # --- formatting ---------------------------------------------------------------------------

    def format_tag(self, name: str) -> str:
        """A Danbooru tag name as this model's prompt text: spaces, escaped parentheses."""
        text = underscores_to_spaces(name.strip())
        if self.escape_parentheses:
            text = escape_parentheses(text)
        return text

    def format_artist(self, name: str) -> str:
        """An artist name as this model writes it (`@name` on Anima)."""
        bare = name.strip().lstrip("@").strip()
        return self.artist_prefix + self.format_tag(bare)


_ESCAPABLE = re.compile(r"(?<!\\)([()])")


def escape_parentheses(text: str) -> str:
    """`honkai (series)` → `honkai \\(series\\)`; already escaped parentheses stay as they are."""
    return _ESCAPABLE.sub(r"\\\1", text)


def underscores_to_spaces(text: str) -> str:
    """Danbooru's `looking_at_viewer` → `looking at viewer`. Emoticon tags (`^_^`, `o_o`, `>_<`: three
    characters at most, as in Danbooru's own list) keep their underscore."""
    if len(text) <= 3:
        return text
    return text.replace("_", " ")


# --- loading ---------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise DialectError(f"missing data file {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise DialectError(f"{path}: {e}") from e


def _get(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise DialectError(f"{where}: missing key {key!r}")
    value = table[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise DialectError(f"{where}: {key!r} must be {kind.__name__}")
    return value


@functools.cache
def load_choices(data_dir: Path = DATA_DIR) -> Choices:
    raw = _read(data_dir / "choices.toml")
    where = str(data_dir / "choices.toml")
    periods = {name: (int(r[0]), int(r[1])) for name, r in _get(raw, "periods", dict, where).items()}
    return Choices(
        quality=tuple(_get(raw, "quality", list, where)),
        rating=tuple(_get(raw, "rating", list, where)),
        nsfw_ratings=frozenset(_get(raw, "nsfw_ratings", list, where)),
        rating_aliases=dict(_get(raw, "rating_aliases", dict, where)),
        periods=periods,
    )


def available_dialects(data_dir: Path = DATA_DIR) -> list[str]:
    return sorted(p.stem for p in (data_dir / "models").glob("*.toml"))


@functools.cache
def load_dialect(dialect_id: str, data_dir: Path = DATA_DIR) -> Dialect:
    path = data_dir / "models" / f"{dialect_id}.toml"
    if not path.is_file():
        known = ", ".join(available_dialects(data_dir))
        raise DialectError(f"unknown dialect {dialect_id!r} (known: {known})")
    raw = _read(path)
    where = str(path)
    choices = load_choices(data_dir)
    gen = _get(raw, "generation", dict, where)
    prompt = _get(raw, "prompt", dict, where)
    vocab = _get(raw, "vocab", dict, where)
    year = raw.get("year", {})
    picked = _get(raw, "choices", dict, where)

    bucket_sets = _read(data_dir / "buckets.toml")
    set_name = _get(gen, "buckets", str, where)
    if set_name not in bucket_sets:
        raise DialectError(f"{where}: unknown bucket set {set_name!r}")
    buckets = tuple(Bucket(a, int(wh[0]), int(wh[1])) for a, wh in bucket_sets[set_name].items())

    order = tuple(_get(prompt, "order", list, where))
    if sorted(order) != sorted(SECTIONS):
        raise DialectError(f"{where}: order must list each of {', '.join(SECTIONS)} once")

    def strings(table: dict[str, Any], key: str) -> tuple[str, ...]:
        return tuple(str(v) for v in _get(table, key, list, where))

    quality_choices = dict(_get(picked, "quality", dict, where))
    rating_choices = dict(_get(picked, "rating", dict, where))
    period_choices = dict(_get(picked, "period", dict, where))
    for label, mapping, canon in (
        ("quality", quality_choices, choices.quality),
        ("rating", rating_choices, choices.rating),
        ("period", period_choices, tuple(choices.periods)),
    ):
        missing = set(canon) - set(mapping)
        if missing:
            raise DialectError(f"{where}: choices.{label} lacks {', '.join(sorted(missing))}")

    dialect = Dialect(
        id=dialect_id,
        name=_get(raw, "name", str, where),
        family=_get(raw, "family", str, where),
        steps=_get(gen, "steps", int, where),
        cfg=_get(gen, "cfg", float, where),
        sampler=_get(gen, "sampler", str, where),
        default_aspect=_get(gen, "aspect", str, where),
        negative=_get(gen, "negative", str, where),
        nsfw_negative=_get(gen, "nsfw_negative", str, where),
        buckets=buckets,
        order=order,
        artist_prefix=_get(prompt, "artist_prefix", str, where),
        escape_parentheses=_get(prompt, "escape_parentheses", bool, where),
        quality_terms=strings(vocab, "quality"),
        score_terms=strings(vocab, "score"),
        aesthetic_terms=strings(vocab, "aesthetic"),
        quality_meta_terms=strings(vocab, "quality_meta"),
        rating_terms=strings(vocab, "rating"),
        period_terms=strings(vocab, "periods"),
        year_format=year.get("format"),
        year_min=int(year.get("min", 0)),
        year_max=int(year.get("max", 9999)),
        quality_choices=quality_choices,
        rating_choices=rating_choices,
        period_choices=period_choices,
        choices=choices,
    )
    if dialect.bucket(dialect.default_aspect) is None:
        raise DialectError(f"{where}: default aspect {dialect.default_aspect!r} is not a bucket")
    return dialect
