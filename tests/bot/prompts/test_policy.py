"""The content policy: normalization, the rating reading of every spelling the issue (and more) tried, banned
words, the verdict and its storage form."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.config import load_config
from bot.core.errors import UserError
from bot.prompts.builder import PromptChoices
from bot.prompts.dialects import load_dialect
from bot.prompts.policy import (
    PolicyFields,
    Verdict,
    banned_word,
    content_policy,
    fold,
    normalize_text,
    rating_options,
    words,
)
from bot.prompts.requests import GenerationRequest, resolve_request

MODELS = load_config(None).models

# Every way of writing an nsfw rating into the prompt that the issue tried, and more.
NSFW_SPELLINGS = [
    "explicit",
    "Explicit",
    "EXPLICIT",
    "explicit.",
    "explicit!",
    "explicit?",
    "#explicit",
    "rating:explicit",
    "rating_explicit",
    "rating: explicit",
    "artist:explicit",
    "(explicit:1.4)",
    "[nsfw]",
    "((nsfw))",
    "\\(explicit\\)",
    "ｅｘｐｌｉｃｉｔ",
    "ＮＳＦＷ",
    "nsfw",
    "NSFW.",
    "questionable",
    "rating:e",
    "rating:q",
    "rating_q",
    "ex\u200dplicit",  # zero-width joiner
    "ex\u200bplicit",  # zero-width space
    "ex\u200cplicit",  # zero-width non-joiner
    "ex\u2060plicit",  # word joiner
    "ex\ufeffplicit",  # zero-width no-break space
    "ex\u00adplicit",  # soft hyphen
    "ex\u034fplicit",  # combining grapheme joiner
    "ex\u3164plicit",  # Hangul filler
    "ex\ufe0fplicit",  # variation selector
    "\u202aexplicit\u202c",  # bidi embedding
    "\u200fnsfw\u200e",  # bidi marks
    "ex\x00plicit",  # NUL
    "ex\tplicit",
    "explıcit",  # dotless i
    "expl\u0130cit",  # dotted capital I
    "éxplicit",
    "ex\u0301plicit",  # a combining accent
    "ехрliсit",  # Cyrillic е, х, р, с
    "nѕfw",  # Cyrillic dze
    "ᴇxᴘʟɪᴄɪᴛ",  # small capitals
    "𝐞𝐱𝐩𝐥𝐢𝐜𝐢𝐭",  # mathematical bold
    "ⓔⓧⓟⓛⓘⓒⓘⓣ",  # circled
    "e x p l i c i t",
    "ex-plicit",
    "n.s.f.w",
    "ex\udcffplicit",  # a lone surrogate (an undecodable command-line byte)
]


def resolve(choices: PromptChoices, *, nsfw_allowed: bool = False, banned: tuple[str, ...] = ()) -> Verdict:
    request = GenerationRequest("tiny-sdxl", choices, nsfw_allowed=nsfw_allowed)
    return resolve_request(request, MODELS, banned_words=banned).verdict


@pytest.mark.parametrize("spelling", NSFW_SPELLINGS)
def test_every_spelling_in_the_prompt_is_refused_where_nsfw_is_not_allowed(spelling: str) -> None:
    with pytest.raises(UserError) as err:
        resolve(PromptChoices(f"1girl, {spelling}, smile"))
    assert err.value.key == "nsfw_not_allowed"
    allowed = resolve(PromptChoices(f"1girl, {spelling}, smile"), nsfw_allowed=True)
    assert allowed.nsfw and allowed.rating_class == "nsfw" and allowed.spoiler


@pytest.mark.parametrize(
    "spelling", ["explicit", "nsfw", "rating:explicit", "ｅｘｐｌｉｃｉｔ", "ex\u200dplicit", "@explicit"]
)
def test_the_artist_option_is_read_too(spelling: str) -> None:
    with pytest.raises(UserError) as err:
        resolve(PromptChoices("1girl", artist=f"artist_00, {spelling}"))
    assert err.value.key == "nsfw_not_allowed"


@pytest.mark.parametrize(
    "value",
    ["explicit", "Explicit", "ｅｘｐｌｉｃｉｔ", "ex\u00adplicit", "e", "E", "q", "nsfw", "ＮＳＦＷ", " questionable "],
)
def test_the_rating_option_in_any_spelling(value: str) -> None:
    with pytest.raises(UserError) as err:
        resolve(PromptChoices("1girl", rating=value))
    assert err.value.key == "nsfw_not_allowed"


@pytest.mark.parametrize(
    "text", ["1girl, smile", "1girl, sensitive", "safe, 1girl", "expletive", "explicitly", "ex, plicit"]
)
def test_ordinary_prompts_pass(text: str) -> None:
    verdict = resolve(PromptChoices(text))
    assert not verdict.nsfw and verdict.rating_class == "sfw" and verdict.sfw_negative


def test_verdict_names_the_ratings_and_the_sfw_negative() -> None:
    verdict = resolve(PromptChoices("1girl, rating:explicit, safe"), nsfw_allowed=True)
    assert verdict.ratings == ("general", "explicit") and verdict.rating == "explicit" and not verdict.sfw_negative
    chosen_safe = resolve(PromptChoices("1girl", rating="general"), nsfw_allowed=True)
    assert chosen_safe.sfw_negative and not chosen_safe.nsfw  # a SFW choice holds in an nsfw channel
    assert resolve(PromptChoices("1girl"), nsfw_allowed=True) == Verdict((), False, False)


def test_a_negative_weight_in_the_negative_prompt_asks_for_it() -> None:
    for negative in ("(nsfw:-1.5)", "lowres, (ｅｘｐｌｉｃｉｔ:-0.5)", "((bad hands), rating_explicit:-1)"):
        with pytest.raises(UserError) as err:
            resolve(PromptChoices("1girl", negative=negative))
        assert err.value.key == "nsfw_not_allowed", negative
    assert not resolve(PromptChoices("1girl", negative="nsfw, (explicit:1.5), (safe:-1)")).nsfw


def test_the_negative_follows_the_verdict() -> None:
    """Animagine XL 3.1's recommended negative starts with `nsfw`: an nsfw request drops it, however the
    rating was written (the builder alone knew only its own vocabulary)."""
    models = {"m": replace(MODELS["tiny-sdxl"], name="m", dialect="animagine-xl-3.1")}
    for prompt in ("1girl, explicit", "1girl, rating:explicit", "1girl, ｅｘｐｌｉｃｉｔ."):
        resolved = resolve_request(GenerationRequest("m", PromptChoices(prompt)), models)
        assert resolved.verdict.nsfw and "nsfw" not in resolved.params.negative_prompt.split(", "), prompt
    safe = resolve_request(GenerationRequest("m", PromptChoices("1girl")), models)
    assert safe.params.negative_prompt.startswith("nsfw, ")


def test_tag_aliases_are_read_after_resolution() -> None:
    """The built prompt is judged too: a tag database alias that resolves to an nsfw rating is caught."""

    class Tag:
        name = "explicit"
        category = 0

    class Aliases:
        def lookup(self, names: object) -> dict[str, Tag]:
            return {n: Tag() for n in names if n == "innocent"}  # type: ignore[attr-defined]

    request = GenerationRequest("tiny-sdxl", PromptChoices("1girl, innocent"), nsfw_allowed=False)
    with pytest.raises(UserError) as err:
        resolve_request(request, MODELS, Aliases())
    assert err.value.key == "nsfw_not_allowed"


@pytest.mark.parametrize(
    "text",
    [
        "ｆｏｒｂｉｄｄｅｎ", "forbi\u200bdden", "Forbidden", "FORBIDDEN!", "forbidden_thing", "f o r b i d d e n",
        "fοrbidden",  # Greek omicron
    ],
)
def test_banned_words_are_matched_on_the_normalized_text(text: str) -> None:
    tries = [PromptChoices(f"1girl, {text}"), PromptChoices("1girl", artist=text)]
    tries.append(PromptChoices("1girl", negative=text))
    for choices in tries:
        with pytest.raises(UserError) as err:
            resolve(choices, nsfw_allowed=True, banned=("forbidden",))
        assert err.value.key == "banned_word" and err.value.params == {"word": "forbidden"}
    assert not resolve(PromptChoices("1girl, forbiddance"), banned=("forbidden",)).nsfw  # whole words only


def test_banned_phrases_and_empty_entries() -> None:
    assert banned_word(["bad word"], ["a Bad_Word here"]) == "bad word"
    assert banned_word(["bad word"], ["bad, word"]) is None
    assert banned_word(["", "  "], ["anything"]) is None


def test_normalize_text() -> None:
    assert normalize_text("ｅｘ\u200dｐｌｉｃｉｔ") == "explicit"
    assert normalize_text("a\x00b\x07c") == "a b c"
    assert normalize_text("1girl\nsmile\r\nhat") == "1girl,smile,,hat"  # line breaks separate tags
    assert normalize_text("x\udcffy") == "x\ufffdy"
    assert normalize_text("\ud83d\ude00") == "\U0001f600"  # a surrogate pair is joined
    assert normalize_text("Café (Smile:1.2)") == "Café (Smile:1.2)"  # case and meaning kept for the model
    assert normalize_text("e\u200d\u0301") == "é" == normalize_text(normalize_text("e\u200d\u0301"))
    assert fold("Rating_Explıcit") == "rating explicit"
    assert words("rating:explicit.") == ("rating", "explicit")


def test_verdict_json_round_trip_and_old_rows() -> None:
    verdict = Verdict(("sensitive", "explicit"), True, False)
    assert Verdict.from_json(verdict.to_json()) == verdict
    assert Verdict.from_json(None) is None and Verdict.from_json("") is None and Verdict.from_json("{") is None


def test_autocomplete_asks_the_policy() -> None:
    dialect = load_dialect("anima")
    assert set(rating_options(dialect, nsfw_allowed=False)) == {"general", "sensitive"}
    assert set(rating_options(dialect, nsfw_allowed=True)) == {"general", "sensitive", "questionable", "explicit"}
    assert content_policy().is_nsfw_rating("Ｅ") and not content_policy().is_nsfw_rating("safe")


def test_assess_never_refuses() -> None:
    assert content_policy().assess(PolicyFields("1girl, ｅｘｐｌｉｃｉｔ")).nsfw


@pytest.mark.parametrize(
    "prompt", ["1girl, (ex:1.1)plicit", "1girl, [ex]plicit", "1girl, (n)sfw, smile", "1girl, ((ex))(plicit:1.2)"]
)
def test_a_word_split_by_weighting_is_read_as_the_model_reads_it(prompt: str) -> None:
    """The SDXL backend gives the model the prompt with its weighting stripped (`strip_weighting`: its pooled
    embedding, and the whole text when no weighting is needed): `(ex:1.1)plicit` is `explicit` there."""
    with pytest.raises(UserError) as err:
        resolve(PromptChoices(prompt))
    assert err.value.key == "nsfw_not_allowed"
    for choices in (PromptChoices("1girl, (forbid:1.1)den"), PromptChoices("1girl", negative="[forbid]den")):
        with pytest.raises(UserError) as banned:
            resolve(choices, nsfw_allowed=True, banned=("forbidden",))
        assert banned.value.key == "banned_word"


@pytest.mark.parametrize(
    "prompt",
    ["1girl ex-plicit smile", "a girl, smiling, e x p l i c i t art", "a girl in n.s.f.w style", "1girl nѕ-fw"],
)
def test_a_split_word_inside_a_longer_tag_or_sentence(prompt: str) -> None:
    """Squeezing is not only for a whole tag: a word split by punctuation, or spelled out letter by letter,
    within a sentence (Anima reads sentences) is read too."""
    with pytest.raises(UserError) as err:
        resolve(PromptChoices(prompt))
    assert err.value.key == "nsfw_not_allowed"
    with pytest.raises(UserError) as banned:
        resolve(PromptChoices("a girl with a f-o-r-b-i-d-d-e-n sign"), nsfw_allowed=True, banned=("forbidden",))
    assert banned.value.key == "banned_word"
