"""Turns a user's free prompt and structured choices into the final prompt of one model (pure code).

Free prompt: comma-separated Danbooru tags and/or English sentences. Tags are sorted into the model's
trained order by what they are (count tags like 1girl, character, series, rating, artist, general,
quality...), using the dialect's own vocabularies and, when one is given, the tag database for
character/series/artist/meta categories. Tags within one category keep the order the user wrote them
in; natural-language parts are kept intact. Underscores become spaces, parentheses inside tag names
are escaped, and duplicates are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bot.core.errors import UserError
from bot.prompts.dialects import Dialect, underscores_to_spaces
from inference.prompt_weighting import has_weighting, strip_weighting

# Danbooru tag categories → the prompt section they belong to.
CATEGORY_SECTIONS = {0: "general", 1: "artist", 3: "series", 4: "character", 5: "meta"}
_COUNT_TAG = re.compile(r"^(?:\d+\+?|multiple) ?(?:girl|boy|other)s?$")
_YEAR_TAG = re.compile(r"^year (\d{4})$")
_SENTENCE_END = re.compile(r"[.!?。！？]$")
_QUALIFIED_NAME = re.compile(r"^[^()\[\]]+\([^()\[\]]*\)$")  # `name (qualifier)`, Danbooru style
_NL_MIN_WORDS = 4
MAX_ARTIST_LENGTH = 100
# The quality choice that turns the model's default quality tags off.
NO_QUALITY = "none"
YEAR_BOUNDS = (1900, 2100)

class PromptError(UserError):
    """Bad prompt input (an empty prompt, an unknown quality, rating or year)."""


class TagInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def category(self) -> int: ...


class TagLookup(Protocol):
    def lookup(self, names: Iterable[str]) -> Mapping[str, TagInfo]: ...


@dataclass(frozen=True)
class PromptChoices:
    prompt: str
    negative: str = ""
    quality: str | None = None
    year: str | None = None
    rating: str | None = None
    artist: str | None = None  # one or more, comma-separated
    default_negative: bool = True  # prepend the model's recommended negative prompt
    sfw: bool = False  # add the model's nsfw tags to the negative prompt
    character: str | None = None  # one or more Danbooru character tags, comma-separated (last: positional use)


@dataclass(frozen=True)
class BuiltPrompt:
    prompt: str
    negative_prompt: str
    ratings: frozenset[str] = field(default_factory=frozenset)  # canonical ratings the prompt asks for
    default_quality: tuple[str, ...] = ()  # the model's recommended quality tags, added (none was picked)


@dataclass
class _Entry:
    section: str
    text: str
    key: str  # for de-duplication
    rank: int = 0  # order inside a vocabulary section


def _key(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("\\", "").lower().split())


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets (a weighted group may hold commas)."""
    pieces: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        elif ch in ",\n" and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _blank(name: str) -> bool:
    """Names no one: nothing but `@`, `_` (Danbooru's space) and spaces."""
    return not name.lstrip("@").replace("_", " ").strip()


def _unescape(text: str) -> str:
    return text.replace("\\(", "(").replace("\\)", ")").replace("\\[", "[").replace("\\]", "]")


class _Classifier:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.quality_rank = {_key(t): i for i, t in enumerate(dialect.quality_section_terms)}
        self.quality_text = {_key(t): t for t in dialect.quality_section_terms}
        self.rating_rank = {_key(t): i for i, t in enumerate(dialect.rating_terms)}
        self.period_rank = {_key(t): i for i, t in enumerate(dialect.period_terms)}

    def vocabulary(self, key: str) -> _Entry | None:
        """Terms the model itself defines: quality/score/aesthetic, year/period, rating, count tags."""
        if key in self.quality_rank:
            return _Entry("quality", self.quality_text[key], key, self.quality_rank[key])
        year = _YEAR_TAG.match(key)
        if year:
            return _Entry("year", key, key, -1)
        if key in self.period_rank:
            return _Entry("year", key, key, self.period_rank[key])
        if key in self.rating_rank:
            return _Entry("rating", key, key, self.rating_rank[key])
        if _COUNT_TAG.match(key):
            return _Entry("count", key.replace(" ", ""), key)
        return None


def _terms(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _choice_entries(
    dialect: Dialect, choices: PromptChoices, cls: _Classifier, tags: TagLookup | None = None
) -> list[_Entry]:
    entries: list[_Entry] = []

    def add_vocab(terms: Iterable[str]) -> None:
        for term in terms:
            entry = cls.vocabulary(_key(term))
            assert entry is not None, f"dialect {dialect.id}: {term!r} is not in its own vocabulary"
            entries.append(entry)

    if choices.quality and choices.quality.strip():
        value = choices.quality.strip()
        level = value.lower()
        if level == NO_QUALITY:
            pass  # no quality tags, not even the model's default ones
        elif level in dialect.quality_choices:
            add_vocab(_terms(dialect.quality_choices[level]))
        else:
            terms = _terms(value)
            unknown = [t for t in terms if _key(t) not in cls.quality_rank]
            if unknown or not terms:
                options = ", ".join(dialect.choices.quality)
                raise PromptError("unknown_quality", model=dialect.name, value=value, options=options)
            add_vocab(terms)

    if choices.rating and choices.rating.strip():
        canon = dialect.choices.canonical_rating(choices.rating)
        if canon is None:
            options = ", ".join(dialect.choices.rating)
            raise PromptError("unknown_rating", value=choices.rating.strip(), options=options)
        add_vocab(_terms(dialect.rating_choices[canon]))

    if choices.year and choices.year.strip():
        add_vocab([year_text(dialect, choices.year)])

    if choices.artist and choices.artist.strip():
        for name in _terms(choices.artist):
            if _blank(name):
                continue  # `@` or `_` alone names no one, like an empty name between two commas
            if len(name.lstrip("@").strip()) > MAX_ARTIST_LENGTH:
                raise PromptError("bad_artist", limit=MAX_ARTIST_LENGTH)
            text = dialect.format_artist(name)
            entries.append(_Entry("artist", text, _key(text.lstrip("@"))))

    if choices.character and choices.character.strip():
        names = [n for n in (_unescape(t) for t in _terms(choices.character)) if not _blank(n)]
        for name in names:
            if len(name) > MAX_ARTIST_LENGTH:
                raise PromptError("bad_character", limit=MAX_ARTIST_LENGTH)
        known = tags.lookup(names) if tags is not None and names else {}
        for name in names:
            tag = known.get(name)
            canonical = tag.name if tag is not None else name  # an alias (`miku`) becomes the tag it names
            entries.append(_Entry("character", dialect.format_tag(canonical), _key(canonical)))
    return entries


def year_text(dialect: Dialect, value: str) -> str:
    """A year (`2019`, `year 2019`) or period (`recent`) as this model writes it."""
    raw = " ".join(value.replace("_", " ").lower().split())  # `Year_2019`, `year  2019`: Danbooru spellings
    match = re.fullmatch(r"(?:year\s*)?(\d{4})", raw)
    if match:
        year = int(match.group(1))
        if not YEAR_BOUNDS[0] <= year <= YEAR_BOUNDS[1]:
            raise PromptError("unknown_year", value=value.strip(), options=", ".join(dialect.choices.periods))
        if dialect.year_format:
            if not dialect.year_min <= year <= dialect.year_max:
                raise PromptError(
                    "year_out_of_range", model=dialect.name, low=dialect.year_min,
                    high=dialect.year_max, value=year,
                )
            return dialect.year_format.format(year=year)
        return dialect.period_choices[dialect.choices.period_of_year(year)]
    if raw in dialect.period_choices:
        return dialect.period_choices[raw]
    if raw in dialect.period_terms:
        return raw
    raise PromptError("unknown_year", value=value.strip(), options=", ".join(dialect.choices.periods))


def _looks_like_sentence(text: str) -> bool:
    return bool(_SENTENCE_END.search(text)) or len(text.split()) >= _NL_MIN_WORDS


def _free_entries(dialect: Dialect, prompt: str, cls: _Classifier, tags: TagLookup | None) -> list[_Entry]:
    pieces = split_top_level(prompt)
    # A piece is read as a literal tag name unless it is a weighted group: `firefly (honkai: star rail)`
    # is a name, `(smile:1.2)` is a weight.
    literal = {p: _unescape(p) for p in pieces}
    weighted = {p for p in pieces if has_weighting(p) and not _QUALIFIED_NAME.match(p)}
    names = {p: (strip_weighting(p) if p in weighted else literal[p]).strip() for p in pieces}
    found: Mapping[str, TagInfo] = {}
    if tags is not None:
        candidates = {n for n in names.values() if n and not n.startswith("@")}
        found = tags.lookup(sorted(candidates))

    entries: list[_Entry] = []
    for piece in pieces:
        name = names[piece]
        if _blank(name):
            continue  # ` , _ , @` holds no tag
        key = _key(name)
        in_weight = piece in weighted
        vocab = cls.vocabulary(key)
        if vocab is not None:
            if in_weight:
                vocab.text = piece
            entries.append(vocab)
            continue
        if name.startswith("@"):
            text = piece if in_weight else dialect.format_artist(name)
            entries.append(_Entry("artist", text, _key(name.lstrip("@"))))
            continue
        tag = found.get(name)
        if tag is not None:
            section = CATEGORY_SECTIONS.get(int(tag.category), "general")
            if in_weight:
                text = underscores_to_spaces(piece)
            elif section == "artist":
                text = dialect.format_artist(tag.name)
            else:
                text = dialect.format_tag(tag.name)
            entries.append(_Entry(section, text, _key(tag.name)))
            continue
        if not _QUALIFIED_NAME.match(name) and _looks_like_sentence(name):
            entries.append(_Entry("text", piece, key))
            continue
        text = underscores_to_spaces(piece) if in_weight else dialect.format_tag(name)
        entries.append(_Entry("general", text, key))
    return entries


def _ratings_of(dialect: Dialect, entries: Iterable[_Entry]) -> frozenset[str]:
    first_term = {_key(_terms(text)[0]): canon for canon, text in dialect.rating_choices.items()}
    return frozenset(first_term[e.key] for e in entries if e.section == "rating" and e.key in first_term)


def negative_prompt(dialect: Dialect, choices: PromptChoices, nsfw: bool) -> str:
    """The negative prompt: the model's recommended one (without its nsfw terms when the request is `nsfw`),
    the user's, and the model's nsfw tags when the choices keep nsfw out (`sfw`)."""
    parts = []
    if choices.default_negative:
        default = split_top_level(dialect.negative)
        if nsfw:
            # An nsfw request must not carry the model's "nsfw" in its own default negative (3.1 does).
            nsfw_terms = {_key(t) for t in _terms(dialect.nsfw_negative)}
            default = [p for p in default if _key(p) not in nsfw_terms]
        parts.append(", ".join(default))
    if choices.negative.strip():
        user = [underscores_to_spaces(p) for p in split_top_level(choices.negative)]
        parts.append(", ".join(user))
    if choices.sfw:
        parts.append(dialect.nsfw_negative)
    seen: set[str] = set()
    out: list[str] = []
    for piece in split_top_level(", ".join(parts)):
        key = _key(piece)
        if key not in seen:
            seen.add(key)
            out.append(piece)
    return ", ".join(out)


def _defaults_for(dialect: Dialect, choices: PromptChoices, free: Iterable[_Entry]) -> tuple[str, ...]:
    if choices.quality and choices.quality.strip():
        return ()  # a quality was picked, or `none`
    if any(entry.section == "quality" for entry in free):
        return ()  # the prompt names its own quality tags
    return dialect.default_quality


def default_quality(dialect: Dialect, choices: PromptChoices) -> tuple[str, ...]:
    """The model's recommended quality tags that `build_prompt` adds to these choices: all of them when the
    user picked no quality and wrote no quality tag in the prompt; none otherwise (`none` turns them off)."""
    return _defaults_for(dialect, choices, _free_entries(dialect, choices.prompt, _Classifier(dialect), None))


def build_prompt(dialect: Dialect, choices: PromptChoices, tags: TagLookup | None = None) -> BuiltPrompt:
    """The final prompt and negative prompt for `dialect`. Raises PromptError on bad input."""
    cls = _Classifier(dialect)
    free = _free_entries(dialect, choices.prompt, cls, tags)
    if not free:  # nothing but separators, `@`, `_` or empty weight groups: ` , , `, `@`, `[_]`
        raise PromptError("empty_prompt")
    defaults = _defaults_for(dialect, choices, free)
    entries = [e for e in (cls.vocabulary(_key(t)) for t in defaults) if e is not None]
    entries += _choice_entries(dialect, choices, cls, tags) + free

    seen: set[tuple[str, str]] = set()
    unique: list[_Entry] = []
    for entry in entries:
        ident = (entry.section if entry.section == "artist" else "", entry.key)
        if ident not in seen:
            seen.add(ident)
            unique.append(entry)

    position = {section: i for i, section in enumerate(dialect.order)}
    ordered = sorted(
        enumerate(unique),
        key=lambda item: (position[item[1].section], item[1].rank, item[0]),
    )
    prompt = ", ".join(entry.text for _, entry in ordered)
    ratings = _ratings_of(dialect, unique)
    nsfw = bool(ratings & dialect.choices.nsfw_ratings)
    return BuiltPrompt(prompt, negative_prompt(dialect, choices, nsfw), ratings, defaults)
