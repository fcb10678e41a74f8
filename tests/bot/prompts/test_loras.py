"""LoRAs in requests (bot/prompts/loras.py and resolve_request): the option, `<lora:name:w>` in the prompt, the
checks against the library, the trigger words (seen by the content policy) and what a job stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_config
from bot.core.errors import UserError
from bot.core.jobs import StoredRequest, request_to_json
from bot.prompts.builder import PromptChoices
from bot.prompts.loras import LoraAsk, extract_prompt_loras, parse_lora_option
from bot.prompts.requests import GenerationRequest, resolve_request
from inference.loras import LoraEntry, LoraLibrary
from inference.types import LoraWeight

MODELS = load_config(None).models


def entry(name: str, family: str = "sdxl", **kw: object) -> LoraEntry:
    sha = (name.encode().hex() * 64)[:64]
    return LoraEntry(name, Path(f"/loras/{name}.safetensors"), family, sha, sha[:12], **kw)  # type: ignore[arg-type]


LIBRARY = LoraLibrary(
    None,
    (
        entry("Pixel Art", weight=0.7, triggers=("pixel art",), trigger_position="start"),
        entry("ink", triggers=("ink wash", "monochrome"), trigger_position="end"),
        entry("hidden", triggers=("secretword",), trigger_position="none"),
        entry("spicy", nsfw=True),
        entry("anime-flat", family="anima"),
        entry("bad words", triggers=("forbidden",)),
    ),
)


def req(prompt: str = "1girl, smile", **kw: object) -> GenerationRequest:
    model = str(kw.pop("model", "tiny-sdxl"))
    return GenerationRequest(model, PromptChoices(prompt), seed=1, **kw)  # type: ignore[arg-type]


def test_the_option_is_names_with_optional_weights() -> None:
    assert parse_lora_option("Pixel Art, ink:0.6 , ,x:-1") == [
        LoraAsk("Pixel Art"),
        LoraAsk("ink", 0.6),
        LoraAsk("x", -1.0),
    ]
    assert parse_lora_option(None) == [] and parse_lora_option(" , ") == []
    for bad in ("a:b:1", "ink:heavy", "ink:nan", ":0.5", "ink:inf"):
        with pytest.raises(UserError) as e:
            parse_lora_option(bad)
        assert e.value.key == "lora_bad_syntax"


def test_prompt_tags_are_taken_out_and_the_commas_tidied() -> None:
    assert extract_prompt_loras("1girl, <lora:ink:0.5>, smile <LoRA:Pixel Art>") == (
        "1girl, smile",
        [LoraAsk("ink", 0.5), LoraAsk("Pixel Art")],
    )
    text, asks = extract_prompt_loras("<lora:ink:0.5>, 1girl, <lora:x>,, smile")
    assert text == "1girl, smile" and asks == [LoraAsk("ink", 0.5), LoraAsk("x")]
    assert extract_prompt_loras("1girl, (smile:1.2), <hypernet:x:1>") == ("1girl, (smile:1.2), <hypernet:x:1>", [])
    with pytest.raises(UserError, match="lora:a:1:2"):
        extract_prompt_loras("1girl <lora:a:1:2>")


def test_resolved_loras_are_in_the_params_with_their_hashes_and_weights() -> None:
    resolved = resolve_request(req("1girl, <lora:INK:0.5>", lora="pixel art"), MODELS, loras=LIBRARY)
    pixel, ink = LIBRARY.get("pixel art"), LIBRARY.get("ink")
    assert pixel is not None and ink is not None
    assert resolved.params.loras == (
        LoraWeight("Pixel Art", pixel.sha256, 0.7, pixel.short_hash),
        LoraWeight("ink", ink.sha256, 0.5, ink.short_hash),
    )
    # The stored request: the prompt without the tags, every LoRA in the option (a reroll asks for the same).
    assert resolved.request.choices.prompt == "1girl"
    assert resolved.request.lora == "Pixel Art:0.7, ink:0.5"
    again = resolve_request(
        StoredRequest.model_validate_json(request_to_json(resolved.request)).to_request(), MODELS, loras=LIBRARY
    )
    assert again.params.loras == resolved.params.loras
    assert again.params.prompt == resolved.params.prompt


def test_trigger_words_go_where_the_sidecar_says_once() -> None:
    prompt = resolve_request(
        req("1girl, monochrome", lora="ink, pixel art, hidden"), MODELS, loras=LIBRARY
    ).params.prompt
    tags = prompt.split(", ")  # the dialect puts 1girl first, as it does for any prompt
    assert tags.index("pixel art") < tags.index("monochrome") < tags.index("ink wash")
    assert prompt.count("monochrome") == 1 and "secretword" not in prompt
    plain = resolve_request(req("1girl, monochrome"), MODELS, loras=LIBRARY).params
    assert plain.loras == () and "pixel art" not in plain.prompt


def test_a_lora_named_twice_counts_once_at_the_last_weight() -> None:
    params = resolve_request(req("1girl <lora:ink:0.3>", lora="ink:0.9"), MODELS, loras=LIBRARY).params
    assert [(lora.name, lora.weight) for lora in params.loras] == [("ink", 0.3)]


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"lora": "nope"}, "lora_unknown"),
        ({"prompt": "1girl <lora:nope:1>"}, "lora_unknown"),
        ({"lora": "anime-flat"}, "lora_wrong_family"),
        ({"lora": "ink", "model": "tiny-anima"}, "lora_wrong_family"),
        ({"lora": "spicy", "nsfw_allowed": False}, "lora_nsfw"),
        ({"lora": "ink:2.5"}, "lora_bad_weight"),
        ({"lora": "ink:-2.01"}, "lora_bad_weight"),
        ({"lora": "ink, pixel art, hidden, spicy"}, "lora_too_many"),
        ({"lora": "ink:abc"}, "lora_bad_syntax"),
    ],
)
def test_refusals(kw: dict[str, object], key: str) -> None:
    with pytest.raises(UserError) as e:
        resolve_request(req(**kw), MODELS, loras=LIBRARY)  # type: ignore[arg-type]
    assert e.value.key == key


def test_without_a_library_no_lora_exists() -> None:
    with pytest.raises(UserError) as e:
        resolve_request(req(lora="ink"), MODELS)
    assert e.value.key == "lora_unknown" and e.value.params["options"] == "-"


def test_unknown_lists_only_what_may_be_used_here() -> None:
    with pytest.raises(UserError) as e:
        resolve_request(req(lora="nope", nsfw_allowed=False), MODELS, loras=LIBRARY)
    options = str(e.value.params["options"])
    assert "ink" in options and "spicy" not in options and "anime-flat" not in options


def test_limits_come_from_the_caller() -> None:
    with pytest.raises(UserError) as e:
        resolve_request(req(lora="ink, hidden"), MODELS, loras=LIBRARY, max_loras=1)
    assert e.value.params == {"count": 2, "limit": 1}
    params = resolve_request(req(lora="ink:3"), MODELS, loras=LIBRARY, max_lora_weight=3.0).params
    assert params.loras[0].weight == 3.0


def test_the_names_are_normalized_before_the_lookup() -> None:
    params = resolve_request(req(lora="ＰＩＸＥＬ\u200b ART:０.５"), MODELS, loras=LIBRARY).params
    assert [(lora.name, lora.weight) for lora in params.loras] == [("Pixel Art", 0.5)]


def test_trigger_words_are_judged_by_the_content_policy() -> None:
    with pytest.raises(UserError) as e:
        resolve_request(req(lora="bad words"), MODELS, loras=LIBRARY, banned_words=("forbidden",))
    assert e.value.key == "banned_word"
    resolve_request(req(), MODELS, loras=LIBRARY, banned_words=("forbidden",))  # the word comes from the LoRA
