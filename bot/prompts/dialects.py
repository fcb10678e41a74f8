"""Model dialects: each model's vocabularies, tag order and defaults, read from data/ (pure code).

A dialect answers "what does this model call X?": the same user choice (quality "masterpiece",
year 2019, rating "explicit", an artist) becomes different text per model.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.validation import format_errors

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
class ToolDefaults:
    """Per-model defaults of the creative tools (img2img strengths are diffusers' `strength`: the share of the
    steps re-run, 0 < strength <= 1)."""

    hires_scale: float = 1.5  # the hires fix's and ⬆'s default factor
    hires_strength: float = 0.45  # the refine pass of a hires fix or an upscale
    vary_strength: float = 0.6  # 🎲: a variation of a result
    img2img_strength: float = 0.65  # /generate image: when no strength is given


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
    # The model card's recommended quality tags (vocabulary terms), added when the user picks no quality.
    default_quality: tuple[str, ...] = ()
    # Samplers the model card recommends that diffusers does not have (Anima's er_sde): shown in /model info
    # and explained in docs/fidelity.md. Names as the card writes them.
    missing_samplers: tuple[str, ...] = ()
    # The creative tools' defaults ([tools] of the data file): the hires fix / upscale factor and denoise, the
    # denoise of a 🎲 variation and of img2img from an upload.
    tools: ToolDefaults = field(default_factory=lambda: ToolDefaults())

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
#
# The data files are read into pydantic models first (strict types, unknown keys refused), so a
# mistake in one is one line naming the file and the key; the checks across files follow.


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Text = Annotated[str, Field(min_length=1)]
Size = Annotated[list[Annotated[int, Field(ge=64, le=8192)]], Field(min_length=2, max_length=2)]
YearRange = Annotated[list[Annotated[int, Field(ge=1, le=9999)]], Field(min_length=2, max_length=2)]


class GenerationData(_Data):
    steps: int = Field(ge=1, le=150)
    cfg: float = Field(ge=0, le=30, allow_inf_nan=False)
    sampler: Text
    aspect: Text
    buckets: Text
    negative: str
    nsfw_negative: str
    missing_samplers: list[Text] = []

    @field_validator("missing_samplers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a sampler twice")
        return value


class PromptData(_Data):
    order: list[str]
    artist_prefix: str
    escape_parentheses: bool
    default_quality: str = ""  # the model card's recommended quality tags, used when the user picks none

    @field_validator("order")
    @classmethod
    def _each_section_once(cls, value: list[str]) -> list[str]:
        if sorted(value) != sorted(SECTIONS):
            raise ValueError(f"must list each of {', '.join(SECTIONS)} once")
        return value


class VocabData(_Data):
    quality: list[Text]
    score: list[Text]
    aesthetic: list[Text]
    quality_meta: list[Text]
    rating: list[Text]
    periods: list[Text]


class YearData(_Data):
    format: str | None = None
    min: int = Field(default=0, ge=0, le=9999)
    max: int = Field(default=9999, ge=0, le=9999)

    @field_validator("format")
    @classmethod
    def _has_year(cls, value: str | None) -> str | None:
        if value is not None and "{year}" not in value:
            raise ValueError("must contain {year}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> YearData:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is after max ({self.max})")
        return self


class ChoiceMapsData(_Data):
    quality: dict[str, str]
    rating: dict[str, str]
    period: dict[str, str]


Strength = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class ToolsData(_Data):
    hires_scale: float = Field(default=1.5, ge=1, le=4, allow_inf_nan=False)
    hires_strength: Strength = 0.45
    vary_strength: Strength = 0.6
    img2img_strength: Strength = 0.65


class DialectData(_Data):
    """One data/models/<id>.toml."""

    name: Text
    family: Literal["sdxl", "anima"]
    generation: GenerationData
    prompt: PromptData
    vocab: VocabData
    year: YearData = YearData()
    choices: ChoiceMapsData
    tools: ToolsData = ToolsData()


class ChoicesData(_Data):
    """data/choices.toml."""

    quality: list[Text] = Field(min_length=1)
    rating: list[Text] = Field(min_length=1)
    nsfw_ratings: list[Text]
    rating_aliases: dict[str, str]
    periods: dict[str, YearRange] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ChoicesData:
        for key, values in (("nsfw_ratings", self.nsfw_ratings), ("rating_aliases", self.rating_aliases.values())):
            unknown = sorted(set(values) - set(self.rating))
            if unknown:
                raise ValueError(f"{key} names ratings that are not in rating: {', '.join(unknown)}")
        for name, (first, last) in self.periods.items():
            if first > last:
                raise ValueError(f"periods.{name}: {first} is after {last}")
        return self


_BUCKETS = TypeAdapter(dict[str, dict[str, Size]], config=ConfigDict(strict=True))


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise DialectError(f"missing data file {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise DialectError(f"{path}: not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise DialectError(f"{path}: not valid UTF-8") from e
    except OSError as e:
        raise DialectError(f"{path}: cannot read: {e.strerror or e}") from e


_M = TypeVar("_M")


def _validate(path: Path, read: Callable[[dict[str, Any]], _M]) -> _M:
    try:
        return read(_read(path))
    except ValidationError as e:
        raise DialectError(format_errors(e, str(path))) from None


@functools.cache
def load_choices(data_dir: Path = DATA_DIR) -> Choices:
    raw = _validate(data_dir / "choices.toml", ChoicesData.model_validate)
    return Choices(
        quality=tuple(raw.quality),
        rating=tuple(raw.rating),
        nsfw_ratings=frozenset(raw.nsfw_ratings),
        rating_aliases=dict(raw.rating_aliases),
        periods={name: (r[0], r[1]) for name, r in raw.periods.items()},
    )


def available_dialects(data_dir: Path = DATA_DIR) -> list[str]:
    return sorted(p.stem for p in (data_dir / "models").glob("*.toml"))


@functools.cache
def load_dialect(dialect_id: str, data_dir: Path = DATA_DIR) -> Dialect:
    path = data_dir / "models" / f"{dialect_id}.toml"
    if not path.is_file():
        known = ", ".join(available_dialects(data_dir))
        raise DialectError(f"unknown dialect {dialect_id!r} (known: {known})")
    raw = _validate(path, DialectData.model_validate)
    where = str(path)
    choices = load_choices(data_dir)
    gen, prompt, vocab, year, picked = raw.generation, raw.prompt, raw.vocab, raw.year, raw.choices

    buckets_path = data_dir / "buckets.toml"
    bucket_sets = _validate(buckets_path, _BUCKETS.validate_python)
    if gen.buckets not in bucket_sets:
        raise DialectError(
            f"{where}: generation.buckets: unknown bucket set {gen.buckets!r} "
            f"(have in {buckets_path}: {', '.join(bucket_sets)})"
        )
    buckets = tuple(Bucket(a, wh[0], wh[1]) for a, wh in bucket_sets[gen.buckets].items())

    for label, mapping, canon in (
        ("quality", picked.quality, choices.quality),
        ("rating", picked.rating, choices.rating),
        ("period", picked.period, tuple(choices.periods)),
    ):
        missing = set(canon) - set(mapping)
        if missing:
            raise DialectError(f"{where}: choices.{label}: lacks {', '.join(sorted(missing))}")
        extra = set(mapping) - set(canon)
        if extra:
            raise DialectError(f"{where}: choices.{label}: unknown choice {', '.join(sorted(extra))}")

    dialect = Dialect(
        id=dialect_id,
        name=raw.name,
        family=raw.family,
        steps=gen.steps,
        cfg=float(gen.cfg),
        sampler=gen.sampler,
        default_aspect=gen.aspect,
        negative=gen.negative,
        nsfw_negative=gen.nsfw_negative,
        buckets=buckets,
        order=tuple(prompt.order),
        artist_prefix=prompt.artist_prefix,
        escape_parentheses=prompt.escape_parentheses,
        quality_terms=tuple(vocab.quality),
        score_terms=tuple(vocab.score),
        aesthetic_terms=tuple(vocab.aesthetic),
        quality_meta_terms=tuple(vocab.quality_meta),
        rating_terms=tuple(vocab.rating),
        period_terms=tuple(vocab.periods),
        year_format=year.format,
        year_min=year.min,
        year_max=year.max,
        quality_choices=dict(picked.quality),
        rating_choices=dict(picked.rating),
        period_choices=dict(picked.period),
        choices=choices,
        missing_samplers=tuple(gen.missing_samplers),
        tools=ToolDefaults(**raw.tools.model_dump()),
        default_quality=tuple(t.strip() for t in prompt.default_quality.split(",") if t.strip()),
    )
    vocabulary = {" ".join(t.lower().split()) for t in dialect.quality_section_terms}
    unknown = [t for t in dialect.default_quality if " ".join(t.lower().split()) not in vocabulary]
    if unknown:
        raise DialectError(
            f"{where}: prompt.default_quality: {', '.join(unknown)} not in the quality vocabulary "
            "(vocab.quality, score, aesthetic, quality_meta)"
        )
    if dialect.bucket(dialect.default_aspect) is None:
        raise DialectError(
            f"{where}: generation.aspect: {dialect.default_aspect!r} is not one of the "
            f"{gen.buckets!r} buckets ({', '.join(b.aspect for b in buckets)})"
        )
    return dialect
