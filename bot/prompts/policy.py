"""The content policy: what every text field becomes before anything reads it, and the one decision on
what a request asks for (its rating, nsfw or not, banned words). Pure code; resolve_request calls it once
per request and the verdict is stored with the job, so nothing downstream decides again.

Two forms of a text:

- `normalize_text`: what is stored, built into the prompt and given to the model. Lone surrogates
  (an undecodable byte on the command line) become U+FFFD, line breaks become a tag separator (`,`),
  other control characters a space (runs of spaces become one), invisible characters (Unicode format
  characters Cf such as zero-width joiners and spaces, soft hyphens, bidi marks; Hangul fillers,
  variation selectors...) are removed, and the text is NFKC-normalized (full-width `ｅｘｐｌｉｃｉｔ` →
  `explicit`), until nothing changes.
- `fold`: the form the policy matches on: the normalized text casefolded, accents and other combining
  marks dropped, letters that only look Latin (Cyrillic `е`, Greek `ο`, dotless `ı`, small capitals)
  folded to it, and Danbooru's `_` read as a space.

The decision reads the folded text as words (runs of letters and digits: `explicit.`, `rating:explicit`,
`rating_explicit`, `artist:explicit` all hold the word `explicit`) and as tags squeezed to their letters
(`e x p l i c i t`, `ex-plicit`). Which words name which rating comes from the data: data/choices.toml
(ratings, which are nsfw, aliases) and every dialect's rating vocabulary (data/models/*.toml). The fields
read are the ones that reach the prompt (prompt, artist, character, quality, year, rating), the built prompt (tag
aliases resolved), and what the negative prompt weights below zero (`(nsfw:-1)` there asks for it).
Banned words are looked for in every field, the negative prompt included. The curated explicit tags
(data/policy/explicit_tags.toml, and through the tag database their aliases) in the fields that reach the
prompt count as the rating `explicit`.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.core.errors import UserError
from bot.prompts.builder import PromptChoices, TagLookup, split_top_level
from bot.prompts.dialects import (
    DATA_DIR,
    Choices,
    Dialect,
    DialectError,
    available_dialects,
    load_choices,
    load_dialect,
)
from bot.validation import format_errors
from inference.prompt_weighting import parse_weighted, strip_weighting

VERDICT_VERSION = 1

# Characters that render as nothing but are not format characters (Unicode's Default_Ignorable_Code_Point
# minus Cf, which is removed by category).
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
    + "".join(chr(c) for c in range(0xE0100, 0xE01F0))
)
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_MAX_PASSES = 4
_SPACES = re.compile(r"  +")

# Letters that survive NFKC and casefolding but look like a Latin letter (the usual spoofing set).
_LOOKALIKES = str.maketrans(
    {
        # Latin
        "ı": "i", "ȷ": "j", "ɡ": "g", "ɑ": "a", "ʋ": "v",
        "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i",
        "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ǫ": "q", "ʀ": "r",
        "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "ӏ": "l", "м": "m",
        "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "ѵ": "v",
        "ԝ": "w", "х": "x", "у": "y", "с": "c", "ԁ": "d", "ɩ": "i",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j", "ω": "w",
    }
)
_WORD = re.compile(r"[^\W_]+")
_PIECE_SEPARATORS = re.compile(r"[,，、;；|]")


# --- normalization ---------------------------------------------------------------------------


def _without_surrogates(text: str) -> str:
    """Surrogate pairs joined into their character, lone surrogates replaced by U+FFFD."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _normalize_once(text: str) -> str:
    out: list[str] = []
    for ch in _without_surrogates(text):
        if ch in _LINE_BREAKS:
            out.append(",")
        elif ch in _INVISIBLE:
            continue
        else:
            category = unicodedata.category(ch)
            if category == "Cf":
                continue
            out.append(" " if category == "Cc" else ch)
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", "".join(out)))


def normalize_text(text: str) -> str:
    """A user's text as it is stored and given to the model (see the module docstring). Idempotent."""
    if text.isascii() and text.isprintable() and "  " not in text:
        return text  # the common case: nothing to change (NFKC leaves printable ASCII as it is)
    for _ in range(_MAX_PASSES):
        out = _normalize_once(text)
        if out == text:
            return out
        text = out
    return text


def normalize_optional(text: str | None) -> str | None:
    return None if text is None else normalize_text(text)


def fold(text: str) -> str:
    """The form the policy matches on: normalized, casefolded, combining marks dropped, lookalike letters
    folded to Latin, `_` read as a space."""
    text = normalize_text(text)
    if text.isascii():
        return text.lower().replace("_", " ")
    text = text.casefold().translate(_LOOKALIKES)
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.category(ch).startswith("M"))
    return unicodedata.normalize("NFKC", bare).casefold().translate(_LOOKALIKES).replace("_", " ")


def words(text: str) -> tuple[str, ...]:
    """The words of a text (folded first): runs of letters and digits."""
    return tuple(_WORD.findall(fold(text)))


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(tuple(haystack[i : i + n]) == tuple(needle) for i in range(len(haystack) - n + 1))


@dataclass(frozen=True)
class _Reading:
    """A text read for matching: its pieces as words, every word, and each piece, each space-separated
    token and each run of one-letter words squeezed to its letters and digits (`e x p l i c i t` and
    `ex-plicit` both give `explicit`, alone or within a sentence)."""

    pieces: tuple[tuple[str, ...], ...]
    words: frozenset[str]
    squeezed: frozenset[str]

    def has(self, key: tuple[str, ...]) -> bool:
        """Whether one piece holds these words, in order (one set lookup for one word)."""
        if not key or key[0] not in self.words:
            return False
        return len(key) == 1 or any(_contains(piece, key) for piece in self.pieces)


def _read(text: str) -> _Reading:
    raw = _PIECE_SEPARATORS.split(fold(text))
    pieces = tuple(p for p in (tuple(_WORD.findall(r)) for r in raw) if p)
    squeezed = {"".join(p) for p in pieces}
    # Within a tag or a sentence too: each space-separated token (`ex-plicit`, `n.s.f.w`), and each run of
    # one-letter words (`e x p l i c i t`).
    squeezed.update("".join(w) for r in raw for w in map(_WORD.findall, r.split()) if len(w) > 1)
    for piece in pieces:
        run: list[str] = []
        for word in (*piece, ""):
            if len(word) == 1:
                run.append(word)
                continue
            if len(run) > 1:
                squeezed.add("".join(run))
            run = []
    return _Reading(pieces, frozenset(w for p in pieces for w in p), frozenset(squeezed))


# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the policy decided about one request. Stored with the job (jobs.verdict, JSON)."""

    ratings: tuple[str, ...]  # canonical ratings the request names, chosen or written, mildest first
    nsfw: bool  # one of them is an nsfw rating
    sfw_negative: bool  # the model's nsfw tags were added to the negative prompt

    @property
    def rating_class(self) -> Literal["sfw", "nsfw"]:
        return "nsfw" if self.nsfw else "sfw"

    @property
    def rating(self) -> str | None:
        """The strongest rating named, or None if none was."""
        return self.ratings[-1] if self.ratings else None

    @property
    def spoiler(self) -> bool:
        """Results go behind a spoiler where the server asks for that (`[discord] spoiler_sensitive`)."""
        return self.nsfw

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERDICT_VERSION,
                "class": self.rating_class,
                "ratings": list(self.ratings),
                "sfw_negative": self.sfw_negative,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Verdict | None:
        """The stored verdict; None for a job stored before verdicts existed (or an unreadable one)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            ratings = tuple(str(r) for r in data["ratings"])
            return cls(ratings, data["class"] == "nsfw", bool(data["sfw_negative"]))
        except (ValueError, KeyError, TypeError):
            return None


# --- explicit tags ----------------------------------------------------------------------------


class _ExplicitData(BaseModel):
    """data/policy/explicit_tags.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    version: Literal[1]
    words: list[str] = Field(min_length=1)
    tags: list[str] = []


@dataclass(frozen=True)
class ExplicitTags:
    """The curated explicit tags, folded: `words` match as words anywhere, `tags` only as a whole tag; both
    also squeezed to their letters. `found` gives the first one a reading holds (its listed spelling)."""

    words: Mapping[tuple[str, ...], str]
    tags: Mapping[tuple[str, ...], str]

    def found(self, reading: _Reading) -> str | None:
        for key, name in self.words.items():
            if reading.has(key) or "".join(key) in reading.squeezed:
                return name
        for key, name in self.tags.items():
            if key in reading.pieces or "".join(key) in reading.squeezed:
                return name
        return None


EXPLICIT_TAGS_FILE = DATA_DIR / "policy" / "explicit_tags.toml"


@functools.cache
def load_explicit_tags(path: Path = EXPLICIT_TAGS_FILE) -> ExplicitTags:
    try:
        raw = _ExplicitData.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as e:
        raise DialectError(f"cannot read {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DialectError(f"{path}: not valid TOML: {e}") from None
    except ValidationError as e:
        raise DialectError(format_errors(e, str(path))) from None

    def keyed(names: list[str]) -> dict[tuple[str, ...], str]:
        out = {words(name): name for name in names}
        if () in out:
            raise DialectError(f"{path}: an entry holds no letters or digits")
        return out

    return ExplicitTags(keyed(raw.words), keyed(raw.tags))


def canonical_names(texts: Iterable[str | None], tags: TagLookup) -> str:
    """The tag database's names for the tags of these texts (`naked` -> `nude`, weights stripped), joined
    as one tag list: what an alias stands for, for the explicit-tag check."""
    pieces: set[str] = set()
    for text in texts:
        if text:
            for piece in split_top_level(text):
                name = strip_weighting(piece).replace("\\(", "(").replace("\\)", ")").strip()
                if name:
                    pieces.add(name.lstrip("@"))
    found = tags.lookup(sorted(pieces)) if pieces else {}
    return ", ".join(sorted({tag.name for tag in found.values()}))


# --- the policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyFields:
    """The text fields of a request that reach the model's prompt, already normalized."""

    prompt: str
    negative: str = ""
    quality: str | None = None
    year: str | None = None
    rating: str | None = None
    artist: str | None = None
    character: str | None = None

    @classmethod
    def of(cls, choices: PromptChoices) -> PolicyFields:
        return cls(
            choices.prompt, choices.negative, choices.quality, choices.year, choices.rating, choices.artist,
            choices.character,
        )


class ContentPolicy:
    """Which words name which rating (from the choices and every dialect), and the decision on a request."""

    def __init__(self, choices: Choices, dialects: Iterable[Dialect], explicit: ExplicitTags | None = None) -> None:
        self.choices = choices
        self.explicit = explicit or ExplicitTags({}, {})
        self.order = {name: i for i, name in enumerate(choices.rating)}
        names: dict[tuple[str, ...], str] = {}

        def name(text: str, canon: str) -> None:
            key = words(text)
            if key and (key not in names or self.order[canon] > self.order[names[key]]):
                names[key] = canon

        for canon in choices.rating:
            name(canon, canon)
            name(f"rating {canon}", canon)
        for alias, canon in choices.rating_aliases.items():
            if canon in self.order:
                # One-letter aliases (e, q) only as Danbooru's `rating:e`: a lone `e` is not a rating.
                name(alias if len(alias) > 1 else f"rating {alias}", canon)
        for dialect in dialects:
            for canon, text in dialect.rating_choices.items():
                first = next((t for t in text.split(",") if t.strip()), "")
                if canon in self.order and first:
                    name(first, canon)
        self.rating_names = names
        self.squeezed = {"".join(key): canon for key, canon in names.items()}

    # -- reading -------------------------------------------------------------------------------

    def chosen_rating(self, value: str | None) -> str | None:
        """The canonical rating of the rating option (`explicit`, `ｅｘｐｌｉｃｉｔ`, `e`, `nsfw`), or None."""
        if value is None or not value.strip():
            return None
        folded = " ".join(words(value))
        canon = self.choices.rating_aliases.get(folded, folded)
        return canon if canon in self.order else None

    def ratings_in(self, text: str) -> list[str]:
        """Canonical ratings a free text names, mildest first."""
        return self._ratings(_read(text))

    def _ratings(self, reading: _Reading) -> list[str]:
        found = {canon for key, canon in self.rating_names.items() if reading.has(key)}
        found.update(self.squeezed[s] for s in reading.squeezed if s in self.squeezed)
        return sorted(found, key=self.order.__getitem__)

    def is_nsfw_rating(self, value: str) -> bool:
        """Whether a rating option value names an nsfw rating (autocomplete hides those where refused)."""
        return self.chosen_rating(value) in self.choices.nsfw_ratings

    def sfw_negative(self, fields: PolicyFields, nsfw_allowed: bool, asked: bool = False) -> bool:
        """Whether the model's nsfw tags go into the negative prompt: wherever nsfw is refused, when a
        rating that is not nsfw was chosen (a SFW choice holds in age-restricted channels too), or when
        the request already asked for it (`asked`: a stored request rerolled)."""
        chosen = self.chosen_rating(fields.rating)
        return asked or not nsfw_allowed or (chosen is not None and chosen not in self.choices.nsfw_ratings)

    # -- deciding ------------------------------------------------------------------------------

    def judge(
        self,
        fields: PolicyFields,
        built_prompt: str,
        *,
        nsfw_allowed: bool,
        sfw_negative: bool,
        banned_words: Sequence[str] = (),
        tags: TagLookup | None = None,
    ) -> Verdict:
        """The decision on a request: its normalized fields and the prompt built from them (what the model
        reads, tag aliases resolved). Raises UserError (banned_word, nsfw_not_allowed) when refused.

        An explicit tag (data/policy/explicit_tags.toml; through `tags`, any alias of one) counts as the
        rating `explicit`: refused where nsfw is, with the same message."""
        # A negative weight in the negative prompt asks for the thing: `(nsfw:-1.5)` there is read as asked.
        negated = ", ".join(piece for piece, weight in parse_weighted(fields.negative) if weight < 0)
        # The built prompt as the model also reads it, weighting stripped (SDXL's pooled embedding, and the
        # whole text when no weighting is needed): `(ex:1.1)plicit` there is `explicit`.
        plain = strip_weighting(built_prompt)
        texts = (
            fields.prompt, fields.artist, fields.character, fields.quality, fields.year, built_prompt, plain, negated
        )
        positive = [_read(t) for t in texts if t]
        rating = _read(fields.rating or "")
        negative = [_read(t) for t in {fields.negative, strip_weighting(fields.negative)} if t]
        word = _banned_in(banned_words, [*positive, *negative, rating])
        if word is not None:
            raise UserError("banned_word", word=word)
        found: set[str] = set()
        for reading in positive:
            found.update(self._ratings(reading))
        chosen = self.chosen_rating(fields.rating)
        found.update([chosen] if chosen is not None else self._ratings(rating))
        canonical = canonical_names((fields.prompt, fields.artist, fields.character, negated), tags) if tags else ""
        explicit_in = [*positive, _read(canonical)] if canonical else positive
        if any(self.explicit.found(reading) for reading in explicit_in):
            found.add(self.choices.rating[-1])  # the strongest rating: explicit
        ratings = tuple(sorted(found, key=self.order.__getitem__))
        nsfw = [r for r in ratings if r in self.choices.nsfw_ratings]
        if nsfw and not nsfw_allowed:
            raise UserError("nsfw_not_allowed", value=", ".join(nsfw))
        return Verdict(ratings, bool(nsfw), sfw_negative)

    def assess(self, fields: PolicyFields) -> Verdict:
        """The reading of a request stored before verdicts existed (never refuses): for delivery's
        spoilers of old jobs only."""
        return self.judge(fields, "", nsfw_allowed=True, sfw_negative=False)


def banned_word(banned: Sequence[str], texts: Iterable[str]) -> str | None:
    """The first banned word found in the texts, matched on the folded words of one tag (whole words, in
    order), or as a whole tag squeezed to its letters."""
    return _banned_in(banned, [_read(text) for text in texts if text])


def _banned_in(banned: Sequence[str], readings: Sequence[_Reading]) -> str | None:
    prepared = _prepared(tuple(banned))
    for word, key, squeezed in prepared:
        if any(squeezed in reading.squeezed or reading.has(key) for reading in readings):
            return word
    return None


@functools.lru_cache(maxsize=16)
def _prepared(banned: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], str]]:
    """Each banned word with its folded words and its squeezed form (the configured list is read once)."""
    out = [(word, words(word), "".join(words(word))) for word in banned]
    return [p for p in out if p[1]]


@functools.cache
def content_policy() -> ContentPolicy:
    """The policy of the packaged data (every dialect's rating vocabulary)."""
    return ContentPolicy(load_choices(), [load_dialect(d) for d in available_dialects()], load_explicit_tags())


def rating_options(dialect: Dialect, nsfw_allowed: bool) -> Mapping[str, str]:
    """The rating choices a channel may offer: {choice: the dialect's terms}, nsfw ones only where allowed."""
    policy = content_policy()
    return {k: v for k, v in dialect.rating_choices.items() if nsfw_allowed or not policy.is_nsfw_rating(k)}
