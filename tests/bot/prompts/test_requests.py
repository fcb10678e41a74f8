"""Request resolution: defaults from the model's dialect, sizes and buckets, seeds, range checks."""

from __future__ import annotations

import pytest

from bot.config import load_config
from bot.core.errors import UserError
from bot.prompts.builder import PromptChoices
from bot.prompts.dialects import load_dialect
from bot.prompts.requests import GenerationRequest, resolve_request, resolve_size

MODELS = load_config(None).models


def req(**kw: object) -> GenerationRequest:
    model = str(kw.pop("model", "tiny-sdxl"))
    return GenerationRequest(model, PromptChoices(str(kw.pop("prompt", "1girl"))), **kw)  # type: ignore[arg-type]


def test_defaults_come_from_the_dialect() -> None:
    sdxl = resolve_request(req(seed=7), MODELS).params
    assert (sdxl.steps, sdxl.cfg, sdxl.sampler, sdxl.seeds) == (28, 5.0, "euler_a", (7,))
    # tiny models scale the 832x1216 default bucket by 1/8
    assert (sdxl.width, sdxl.height) == (112, 160)
    anima = resolve_request(req(model="tiny-anima"), MODELS).params
    assert (anima.steps, anima.cfg, anima.sampler) == (30, 4.0, "flow_euler")
    assert (anima.width, anima.height) == (128, 128)


def test_one_seed_per_image() -> None:
    params = resolve_request(req(seed=2**32 - 2, count=3), MODELS).params
    assert params.seeds == (2**32 - 2, 2**32 - 1, 0)


def test_random_seed_when_none_given() -> None:
    seeds = {resolve_request(req(), MODELS).params.seeds[0] for _ in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("aspect", "size"),
    [("1:1", (128, 128)), ("13:19", (112, 160)), ("16:9", (176, 96)), ("2:3", (112, 160)), ("1/3", (80, 192))],
)
def test_aspect_picks_the_nearest_bucket(aspect: str, size: tuple[int, int]) -> None:
    params = resolve_request(req(aspect=aspect), MODELS).params
    assert (params.width, params.height) == size


def test_exact_size() -> None:
    params = resolve_request(req(size="96x64"), MODELS).params
    assert (params.width, params.height) == (96, 64)


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"model": "ghost"}, "unknown_model"),
        ({"steps": 0}, "out_of_range"),
        ({"steps": 151}, "out_of_range"),
        ({"cfg": -1.0}, "out_of_range"),
        ({"count": 9}, "out_of_range"),
        ({"seed": -1}, "out_of_range"),
        ({"size": "100x100"}, "bad_size"),
        ({"size": "huge"}, "bad_size"),
        ({"size": "4096x64"}, "bad_size"),
        ({"size": "72x64", "model": "tiny-anima"}, "bad_size"),
        ({"aspect": "wide"}, "unknown_aspect"),
        ({"aspect": "0:1"}, "unknown_aspect"),
        ({"aspect": "1:1", "size": "64x64"}, "aspect_and_size"),
        ({"sampler": "flow_euler"}, "unknown_sampler"),
        ({"prompt": "x" * 2001}, "prompt_too_long"),
        ({"prompt": " "}, "empty_prompt"),
    ],
)
def test_bad_requests_are_refused(kw: dict[str, object], key: str) -> None:
    with pytest.raises(UserError) as err:
        resolve_request(req(**kw), MODELS)
    assert err.value.key == key


def test_nsfw_is_refused_where_not_allowed_even_typed_in_the_prompt() -> None:
    for choices in (PromptChoices("1girl", rating="explicit"), PromptChoices("1girl, nsfw")):
        with pytest.raises(UserError) as err:
            resolve_request(GenerationRequest("tiny-sdxl", choices, nsfw_allowed=False), MODELS)
        assert err.value.key == "nsfw_not_allowed"
    safe = resolve_request(GenerationRequest("tiny-sdxl", PromptChoices("1girl"), nsfw_allowed=False), MODELS)
    assert safe.params.negative_prompt.endswith("nsfw, explicit")
    allowed = resolve_request(GenerationRequest("tiny-sdxl", PromptChoices("1girl, explicit")), MODELS)
    assert "explicit" in allowed.params.prompt


def test_huge_and_tiny_aspect_values_neither_overflow_nor_crash() -> None:
    spec = MODELS["tiny-sdxl"]
    dialect = load_dialect(spec.dialect)
    for aspect in ("9" * 400 + ":1", "1:" + "9" * 400, "1e5:1"):  # OverflowError before; now a clear refusal
        with pytest.raises(UserError) as err:
            resolve_size(GenerationRequest("tiny-sdxl", PromptChoices("1girl"), aspect=aspect), spec, dialect)
        assert err.value.key == "unknown_aspect"
    tall = resolve_request(req(aspect="0." + "0" * 30 + "1:1"), MODELS).params  # ValueError (log of 0) before
    wide = resolve_request(req(aspect="9" * 90 + ":1"), MODELS).params
    assert tall.height > tall.width and wide.width > wide.height


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"prompt": " , , "}, "empty_prompt"),
        ({"prompt": "@"}, "empty_prompt"),
        ({"prompt": "@ , [@]"}, "empty_prompt"),
        ({"prompt": "_"}, "empty_prompt"),  # found by the property tests: `_` is Danbooru's space
        ({"prompt": "@_, (_ _:1.2)"}, "empty_prompt"),
        ({"prompt": "\u200b\u00ad\x00"}, "empty_prompt"),
        ({"negative": "x" * 6000}, "option_too_long"),
        ({"artist": "x" * 1001}, "option_too_long"),
        ({"artist": "a" * 101}, "bad_artist"),
        ({"quality": "q" * 101}, "option_too_long"),
        ({"sampler": "s" * 101}, "option_too_long"),
        ({"prompt": "\ufdfa" * 200}, "prompt_too_long"),  # NFKC makes each 18 characters: measured after
    ],
)
def test_empty_prompts_and_long_options_are_refused(kw: dict[str, str], key: str) -> None:
    prompt = kw.pop("prompt", "1girl")
    sampler = kw.pop("sampler", None)
    request = GenerationRequest("tiny-sdxl", PromptChoices(prompt, **kw), sampler=sampler)  # type: ignore[arg-type]
    with pytest.raises(UserError) as err:
        resolve_request(request, MODELS)
    assert err.value.key == key


def test_control_characters_and_surrogates_never_reach_the_parameters() -> None:
    choices = PromptChoices("1girl\x00, smile\x07\nhat, \udcff", negative="bad\x1b[31m\r\nhands", artist="a\x00b")
    resolved = resolve_request(GenerationRequest("tiny-sdxl", choices, seed=1), MODELS)
    p = resolved.params
    for text in (p.prompt, p.negative_prompt):
        assert not any(ord(ch) < 32 or ord(ch) == 127 or "\ud800" <= ch <= "\udfff" for ch in text), text
        text.encode("utf-8")
    assert "smile" in p.prompt and "hat" in p.prompt and "\ufffd" in p.prompt and "a b" in p.prompt
    stored = resolved.request.choices  # what the job stores (and a reroll reads) is the normalized text
    assert stored.prompt == "1girl , smile ,hat, \ufffd" and stored.artist == "a b"


def test_blank_artist_names_name_no_one() -> None:
    """`@`, `_` (Danbooru's space) and `@_` are read like an empty name between two commas (the property
    tests found `a, _` refused while `a,  ` was accepted)."""
    def prompt(artist: str) -> str:
        request = GenerationRequest("tiny-sdxl", PromptChoices("1girl", quality="none", artist=artist), seed=1)
        return resolve_request(request, MODELS).params.prompt

    for artist in ("artist_a, _", "artist_a, @", "@_, artist_a", "artist_a"):
        assert prompt(artist) == prompt("artist_a,  ") == "1girl, artist a", artist
