"""Property tests (hypothesis) of the content policy, the prompt builder and request validation: for any
input, never a traceback, either a UserError whose key is in the message catalog or a valid resolved
request; and every disguise of a text (format characters, full-width forms, case, `_` for a space) reads as
the text itself. Counts are bounded for CI; see tests/fuzz.py for the long mode (ANIMEBOT_FUZZ_LONG=1)."""

from __future__ import annotations

import math
import unicodedata

from hypothesis import event, example, given
from hypothesis import strategies as st

from bot.config import load_config
from bot.core.errors import UserError
from bot.core.messages import CATALOG
from bot.prompts.builder import PromptChoices, build_prompt
from bot.prompts.dialects import available_dialects, load_dialect
from bot.prompts.policy import PolicyFields, content_policy, fold, normalize_text
from bot.prompts.requests import GenerationRequest, ResolvedRequest, resolve_request
from tests.fuzz import WORDS, fuzz_settings, nasty_text

MODELS = load_config(None).models
POLICY = content_policy()
INVISIBLE = [
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f", "\u3164", "\ufe0f", "\u202a", "\u200e"
]


def bad_text(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in text)


# --- normalization ---------------------------------------------------------------------------


@fuzz_settings(200)
@given(nasty_text(200))
@example("e\u200d\u0301")  # removing the joiner lets the accent compose: a second pass is needed
@example("\ud83d\ude00\udcff")
def test_normalized_text_is_clean_utf8_and_stable(text: str) -> None:
    clean = normalize_text(text)
    clean.encode("utf-8")
    assert not bad_text(clean), ascii(clean)
    assert normalize_text(clean) == clean
    assert fold(clean) == fold(text)


# --- disguises never change the reading -------------------------------------------------------

ASCII_TAG = st.text(st.sampled_from("abcdeilnpqrstxy19 _:.!"), min_size=1, max_size=12)
PROMPTS = st.lists(st.one_of(st.sampled_from(WORDS), ASCII_TAG), min_size=1, max_size=8).map(", ".join)


@st.composite
def disguised(draw: st.DrawFn, text: str) -> str:
    """The same text as a hostile user may write it: invisible characters anywhere, full-width forms,
    random case, `_` for a space and back."""
    out = []
    for ch in text:
        if ch.isascii() and ch.isalpha() and draw(st.booleans()):
            ch = ch.swapcase()
        if "!" <= ch <= "~" and draw(st.booleans()):
            ch = chr(ord(ch) + 0xFEE0)  # the full-width form
        elif ch in " _" and draw(st.booleans()):
            ch = "_" if ch == " " else " "
        out.append(ch)
        if draw(st.integers(0, 3)) == 0:
            out.append(draw(st.sampled_from(INVISIBLE)))
    return "".join(out)


def test_a_fixed_disguise() -> None:
    disguise = "1ｇｉｒｌ, ｅｘ\u200dＰＬＩ\u00adcit"
    assert POLICY.ratings_in(disguise) == POLICY.ratings_in("1girl, explicit") == ["explicit"]


@fuzz_settings(150)
@given(st.data(), PROMPTS)
def test_disguises_never_change_the_ratings(data: st.DataObject, prompt: str) -> None:
    other = data.draw(disguised(prompt))
    assert POLICY.ratings_in(other) == POLICY.ratings_in(prompt), (prompt, other)


def outcome(request: GenerationRequest, banned: tuple[str, ...] = ()) -> tuple[str, object]:
    try:
        resolved = resolve_request(request, MODELS, banned_words=banned)
    except UserError as e:
        return ("refused", e.key)
    return ("verdict", resolved.verdict)


RATINGS = st.sampled_from([None, "explicit", "general", "e", "nsfw", "sensitive", "rating:e"])
QUALITIES = st.sampled_from([None, "best", "masterpiece", "best_quality", "score_9, good quality", "divine"])
YEARS = st.sampled_from([None, "2019", "year_2019", "newest", "1850", "soon"])


@fuzz_settings(100)
@given(st.data(), PROMPTS, RATINGS, QUALITIES, YEARS, st.booleans())
def test_disguises_never_change_the_decision(
    data: st.DataObject, prompt: str, rating: str | None, quality: str | None, year: str | None, nsfw_allowed: bool
) -> None:
    """The same request, disguised field by field, gets the same outcome: the same refusal, or the same
    verdict (the builder's reading of quality, year and artist included)."""
    artist = data.draw(st.one_of(st.none(), PROMPTS))
    plain = GenerationRequest(
        "tiny-sdxl", PromptChoices(prompt, quality=quality, year=year, rating=rating, artist=artist),
        nsfw_allowed=nsfw_allowed,
    )

    def disguise(text: str | None) -> str | None:
        return None if text is None else data.draw(disguised(text))

    choices = PromptChoices(
        data.draw(disguised(prompt)), quality=disguise(quality), year=disguise(year), rating=disguise(rating),
        artist=disguise(artist),
    )
    hostile = GenerationRequest("tiny-sdxl", choices, nsfw_allowed=nsfw_allowed)
    banned = ("forbidden", "bad word")
    first = outcome(plain, banned)
    event(f"{first[0]}: {first[1] if isinstance(first[1], str) else getattr(first[1], 'rating_class', '')}")
    assert outcome(hostile, banned) == first


# --- the builder -----------------------------------------------------------------------------

OPTIONAL = st.integers(0, 5).flatmap(
    lambda i: [nasty_text(30), st.sampled_from(["best", "masterpiece", "2019", "newest", "explicit"])][i] if i < 2
    else st.none()
)


@fuzz_settings(150)
@given(
    st.sampled_from(available_dialects()),
    nasty_text(120),
    nasty_text(40),
    OPTIONAL,
    OPTIONAL,
    OPTIONAL,
    OPTIONAL,
    st.booleans(),
    st.booleans(),
)
@example("anima", "@", "", None, None, None, None, True, False)  # a lone `@` built an empty artist before
@example("animagine-xl-4.0", "_", "", None, None, None, None, True, False)  # `_` (a space) was a tag before
def test_the_builder_refuses_clearly_or_builds(
    dialect_id: str,
    prompt: str,
    negative: str,
    quality: str | None,
    year: str | None,
    rating: str | None,
    artist: str | None,
    default_negative: bool,
    sfw: bool,
) -> None:
    dialect = load_dialect(dialect_id)
    choices = PromptChoices(prompt, negative, quality, year, rating, artist, default_negative, sfw)
    try:
        built = build_prompt(dialect, choices)
    except UserError as e:
        assert e.key in CATALOG["en"]
        return
    assert built.prompt.strip() and not built.prompt.startswith(",") and ", ," not in built.prompt
    assert all(p.replace("_", " ").strip() not in ("", "@") for p in built.prompt.split(", ")), built.prompt
    assert built.ratings <= set(dialect.choices.rating)


# --- request validation ----------------------------------------------------------------------

def mostly(valid: st.SearchStrategy[object], junk: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Valid values 11 times in 12, so that many requests get past every check."""
    return st.sampled_from(range(12)).flatmap(lambda i: junk if i == 5 else valid)  # 0 and 11 are drawn often


SEEDS = mostly(st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.integers(-(2**70), 2**70))
STEPS = mostly(st.one_of(st.none(), st.integers(1, 150)), st.integers(-(2**70), 2**70))
FLOATS = mostly(st.one_of(st.none(), st.floats(0, 30)), st.floats(allow_nan=True, allow_infinity=True))
ASPECTS = mostly(
    st.one_of(st.none(), st.sampled_from(["1:1", "13:19", "16:9", "0." + "0" * 80 + "1:1", "9" * 90 + ":1"])),
    st.one_of(
        nasty_text(20),
        st.sampled_from(["0:1", "1:0", "9" * 400 + ":1", "１:１"]),
        st.tuples(st.integers(0, 10**30), st.integers(0, 10**30)).map(lambda t: f"{t[0]}:{t[1]}"),
    ),
)
SIZES = mostly(st.none(), st.one_of(nasty_text(12), st.sampled_from(["96x64", "4096x64", "9" * 300 + "x64"])))
COUNTS = mostly(st.integers(1, 8), st.integers(-(2**40), 2**40))
SAMPLERS = mostly(st.none(), st.one_of(st.sampled_from(["euler_a", "flow_euler", "dpmpp_2m"]), nasty_text(10)))
MODEL_NAMES = mostly(st.sampled_from(sorted(MODELS)), nasty_text(12))


@fuzz_settings(150)
@given(
    MODEL_NAMES,
    st.builds(
        PromptChoices,
        nasty_text(150),
        nasty_text(40),
        OPTIONAL,
        OPTIONAL,
        st.one_of(OPTIONAL, st.sampled_from(["e", "q", "ｅｘｐｌｉｃｉｔ", "general"])),
        OPTIONAL,
        st.booleans(),
        st.booleans(),
    ),
    SEEDS,
    STEPS,
    FLOATS,
    ASPECTS,
    SIZES,
    COUNTS,
    SAMPLERS,
    st.booleans(),
    st.lists(st.one_of(nasty_text(10), st.sampled_from(["forbidden", "smile"])), max_size=3),
)
def test_any_request_is_refused_clearly_or_resolved(
    model: str,
    choices: PromptChoices,
    seed: int | None,
    steps: int | None,
    cfg: float | None,
    aspect: str | None,
    size: str | None,
    count: int,
    sampler: str | None,
    nsfw_allowed: bool,
    banned: list[str],
) -> None:
    request = GenerationRequest(model, choices, seed, steps, cfg, aspect, size, count, sampler, nsfw_allowed)
    try:
        resolved = resolve_request(request, MODELS, banned_words=banned)
    except UserError as e:
        event(f"refused: {e.key} {e.params.get('name', '')}")
        assert e.key in CATALOG["en"] and e.key != "generic_error"
        for language in CATALOG:
            CATALOG[language].get(e.key, CATALOG["en"][e.key]).format(**e.params).encode("utf-8")
        return
    event("resolved")
    check_resolved(resolved)


def check_resolved(resolved: ResolvedRequest) -> None:
    p, request, verdict = resolved.params, resolved.request, resolved.verdict
    for text in (p.prompt, p.negative_prompt, request.choices.prompt, request.choices.negative, request.model):
        text.encode("utf-8")
        assert not bad_text(text), ascii(text)
    assert p.prompt.strip()
    assert 1 <= p.steps <= 150 and 0 <= p.cfg <= 30 and math.isfinite(p.cfg)
    assert 1 <= p.count <= 8 and len(p.seeds) == p.count and all(0 <= s < 2**32 for s in p.seeds)
    assert p.width >= 64 and p.height >= 64 and p.width <= 2048 and p.height <= 2048
    if not request.nsfw_allowed:
        assert not verdict.nsfw and request.choices.sfw
        assert not set(POLICY.ratings_in(p.prompt)) & POLICY.choices.nsfw_ratings
    assert POLICY.assess(PolicyFields.of(request.choices)).nsfw <= verdict.nsfw
    # Resolving the stored (normalized) request again gives the same decision (rerolls read it).
    again = resolve_request(request, MODELS)
    assert again.verdict == verdict and again.params.prompt == p.prompt


TEXT_REFUSALS = {
    "empty_prompt", "prompt_too_long", "option_too_long", "unknown_quality", "unknown_rating", "unknown_year",
    "year_out_of_range", "bad_artist", "nsfw_not_allowed", "banned_word",
}


@fuzz_settings(150)
@given(
    st.sampled_from(sorted(MODELS)),
    nasty_text(150),
    nasty_text(40),
    OPTIONAL,
    OPTIONAL,
    OPTIONAL,
    OPTIONAL,
    st.booleans(),
)
def test_hostile_text_in_every_field_is_about_the_text(
    model: str,
    prompt: str,
    negative: str,
    quality: str | None,
    year: str | None,
    rating: str | None,
    artist: str | None,
    nsfw_allowed: bool,
) -> None:
    choices = PromptChoices(prompt, negative, quality, year, rating, artist)
    request = GenerationRequest(model, choices, seed=1, steps=1, nsfw_allowed=nsfw_allowed)
    try:
        resolved = resolve_request(request, MODELS, banned_words=["forbidden"])
    except UserError as e:
        event(f"refused: {e.key}")
        assert e.key in TEXT_REFUSALS
        return
    event("resolved")
    check_resolved(resolved)
