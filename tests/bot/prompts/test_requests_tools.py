"""Request resolution of the creative tools: the kinds' strengths and sizes, the hires fix, the largest image, and
the per-model defaults of data/models/*.toml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import load_config
from bot.core.errors import UserError
from bot.prompts.builder import PromptChoices
from bot.prompts.dialects import DATA_DIR, DialectError, load_dialect
from bot.prompts.requests import GenerationRequest, resolve_request
from inference.types import HiresFix, SourceImage

MODELS = load_config(None).models  # the tiny models: buckets x 1/8
UPLOAD = SourceImage("inputs/ab.png", "ab")
PARENT = SourceImage("images/x.png", "cd", job_id=3, index=1)


def req(**kw: object) -> GenerationRequest:
    model = str(kw.pop("model", "tiny-sdxl"))
    return GenerationRequest(model, PromptChoices("1girl"), **kw)  # type: ignore[arg-type]


def refused(**kw: object) -> str:
    with pytest.raises(UserError) as error:
        resolve_request(req(**kw), MODELS)
    return error.value.key


@pytest.mark.parametrize("dialect", ["animagine-xl-3.1", "animagine-xl-4.0", "anima"])
def test_every_model_has_tool_defaults(dialect: str) -> None:
    tools = load_dialect(dialect).tools
    assert tools.hires_scale == 1.5
    for strength in (tools.hires_strength, tools.vary_strength, tools.img2img_strength):
        assert 0.3 <= strength <= 0.7  # moderate: the composition survives


def test_a_bad_tools_table_is_refused(tmp_path: Path) -> None:
    data = DATA_DIR
    for name in ("choices.toml", "buckets.toml"):
        (tmp_path / name).write_text((data / name).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "models").mkdir()
    text = (data / "models" / "anima.toml").read_text(encoding="utf-8")
    (tmp_path / "models" / "bad.toml").write_text(text.replace("vary_strength = 0.55", "vary_strength = 1.5"))
    with pytest.raises(DialectError, match="vary_strength"):
        load_dialect("bad", tmp_path)


def test_txt2img_is_strength_one_without_a_source() -> None:
    params = resolve_request(req(), MODELS).params
    assert (params.source, params.strength, params.hires) == (None, 1.0, None)


def test_img2img_strength_default_and_range() -> None:
    tools = load_dialect(MODELS["tiny-sdxl"].dialect).tools
    params = resolve_request(req(kind="img2img", source=UPLOAD, aspect="1:1"), MODELS).params
    assert (params.source, params.strength) == (UPLOAD, tools.img2img_strength)
    assert (params.width, params.height) == (128, 128)
    assert resolve_request(req(kind="img2img", source=UPLOAD, strength=0.05), MODELS).params.strength == 0.05
    assert refused(kind="img2img", source=UPLOAD, strength=0.0) == "out_of_range"
    assert refused(kind="img2img", source=UPLOAD, strength=1.5) == "out_of_range"
    assert refused(strength=0.5) == "strength_needs_image"  # no image given


def test_vary_and_upscale_sizes_come_from_the_source() -> None:
    tools = load_dialect(MODELS["tiny-anima"].dialect).tools
    vary = resolve_request(req(model="tiny-anima", kind="vary", source=PARENT, size="112x160"), MODELS).params
    assert ((vary.width, vary.height), vary.strength) == ((112, 160), tools.vary_strength)
    up = resolve_request(req(model="tiny-anima", kind="upscale", source=PARENT, size="112x160"), MODELS).params
    # x1.5 by scaled_size: 168 rounds to 160
    assert ((up.width, up.height), up.strength, up.hires) == ((160, 240), tools.hires_strength, None)
    up2 = resolve_request(req(kind="upscale", source=PARENT, size="96x128", scale=2.0), MODELS).params
    assert (up2.width, up2.height) == (192, 256)
    assert refused(kind="upscale", source=PARENT, size="112x160", scale=2.5) == "out_of_range"
    assert refused(kind="upscale", source=PARENT, size="112x160", scale=2.0) == "image_too_large"


def test_hires_fix_at_the_models_defaults() -> None:
    tools = load_dialect(MODELS["tiny-sdxl"].dialect).tools
    params = resolve_request(req(hires=True, aspect="1:1"), MODELS).params
    assert params.hires == HiresFix(tools.hires_scale, tools.hires_strength)
    assert (params.width, params.height, params.output_size()) == (128, 128, (192, 192))
    assert params.strength == 1.0  # the first pass is txt2img
    assert refused(hires=True, size="256x256") == "image_too_large"  # 384x384 out: over 2048x2048 / 8


def test_a_kind_and_its_source_go_together() -> None:
    with pytest.raises(ValueError):
        resolve_request(req(kind="vary", size="64x64"), MODELS)
    with pytest.raises(ValueError):
        resolve_request(req(source=UPLOAD), MODELS)
    with pytest.raises(ValueError):
        resolve_request(req(kind="upscale", source=PARENT, size="huge"), MODELS)


def test_the_resolved_request_keeps_its_kind_and_source() -> None:
    resolved = resolve_request(req(kind="img2img", source=UPLOAD), MODELS)
    assert dataclasses.replace(resolved.request).kind == "img2img" and resolved.request.source == UPLOAD
