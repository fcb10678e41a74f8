"""Config loading: typed settings, model sources, and one clear message for every mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import (
    ComfyUIFiles,
    ConfigError,
    InferenceSettings,
    ModelSettings,
    QuotaSettings,
    Settings,
    TagSettings,
    load_config,
)
from inference.specs import BuiltinSource, ComfyUISource, DirSource, HubSource, SingleFileSource

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_config_means_the_embedded_tiny_models() -> None:
    config = load_config(None)
    assert set(config.models) == {"tiny-sdxl", "tiny-anima"}
    assert config.default_model.source == BuiltinSource("tiny-sdxl")


def test_example_config_loads_and_documents_every_key() -> None:
    config = load_config(REPO / "config.example.toml")
    assert {"animagine-xl-4", "animagine-xl-3", "anima"} <= set(config.models)
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    for section in (Settings, InferenceSettings, TagSettings, QuotaSettings, ModelSettings, ComfyUIFiles):
        for key in section.model_fields:
            if section is Settings and key in ("inference", "tags", "quotas", "models"):
                continue
            assert re.search(rf"\b{key}\b", text), f"config.example.toml does not mention {key}"


def test_every_source_kind(tmp_path: Path) -> None:
    path = write(tmp_path, """
data_dir = "data"
[models.hub]
family = "sdxl"
hub = "cagliostrolab/animagine-xl-4.0"
variant = "fp16"
[models.dir]
family = "sdxl"
dialect = "animagine-xl-3.1"
path = "weights/a31"
[models.file]
family = "sdxl"
file = "ckpt/a.safetensors"
config = "./configs/sdxl"
[models.comfy]
family = "anima"
comfyui = { root = "comfy", vae = "/abs/vae.safetensors" }
config = "circlestone-labs/Anima-Base-v1.0-Diffusers"
""")
    config = load_config(path)
    assert config.data_dir == tmp_path / "data"
    assert config.tags_db == tmp_path / "data" / "tags.sqlite"
    assert config.models["hub"].source == HubSource("cagliostrolab/animagine-xl-4.0", None, "fp16")
    assert config.models["dir"].source == DirSource(tmp_path / "weights/a31")
    assert config.models["dir"].dialect == "animagine-xl-3.1"
    expected_file = SingleFileSource(tmp_path / "ckpt/a.safetensors", str(tmp_path / "configs/sdxl"))
    assert config.models["file"].source == expected_file
    comfy = config.models["comfy"].source
    assert isinstance(comfy, ComfyUISource)
    assert comfy.diffusion_model == tmp_path / "comfy/models/diffusion_models/anima-preview.safetensors"
    assert comfy.text_encoder == tmp_path / "comfy/models/text_encoders/qwen_3_06b_base.safetensors"
    assert comfy.vae == Path("/abs/vae.safetensors")
    assert comfy.config == "circlestone-labs/Anima-Base-v1.0-Diffusers"
    assert config.models["comfy"].dialect == "anima"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[inference]\ncache_size = 0\n", "inference.cache_size: Input should be greater than or equal to 1"),
        ("[inference]\ncache_sze = 1\n", "inference.cache_sze: unknown key"),
        ("[inference]\ndevice = 'tpu'\n", "inference.device: device must be auto, cuda, cuda:N, mps or cpu"),
        ("[inference]\ndtype = 'int8'\n", "inference.dtype"),
        ("data_dir = 3\n", "data_dir: Input should be a valid string (got 3)"),
        ("[models.x]\nfamily = 'sdxl'\n", "models.x: give exactly one source"),
        ("[models.x]\nhub = 'a/b'\n", "models.x: family is required"),
        ("[models.x]\nfamily = 'sdxl'\nhub = 'a/b'\ndialect = 'nope'\n", "models.x: dialect must be one of"),
        ("[models.x]\nfamily = 'anima'\nfile = 'a.safetensors'\n", "models.x: Anima has no single-file format"),
        ("[models.x]\nfamily = 'sdxl'\ncomfyui = {}\n", "models.x: comfyui files are for family = 'anima'"),
        ("[inference]\ndefault_model = 'ghost'\n", "inference.default_model: no model named 'ghost'"),
        ("[inference\n", "not valid TOML"),
    ],
)
def test_bad_config_gives_one_clear_message(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "Traceback" not in message and "pydantic" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
