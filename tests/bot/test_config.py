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


@pytest.mark.parametrize(
    "database",
    ["animebot.sqlite", "./animebot.sqlite", "sub/../animebot.sqlite", "{data}/animebot.sqlite",
     "../data/animebot.sqlite", "animebot.sqlite-wal", "link.sqlite", "hardlink.sqlite"],
)
def test_the_tag_database_is_never_the_main_database(tmp_path: Path, database: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "animebot.sqlite").write_bytes(b"")
    (data / "link.sqlite").symlink_to(data / "animebot.sqlite")
    (data / "hardlink.sqlite").hardlink_to(data / "animebot.sqlite")
    path = write(tmp_path, f'data_dir = "data"\n[tags]\ndatabase = "{database.format(data=data)}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: tags.database: ")
    assert "is the bot's main database" in str(err.value)


def test_a_tag_database_of_its_own_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, 'data_dir = "data"\n[tags]\ndatabase = "../elsewhere/animebot.sqlite"\n')
    assert load_config(path).tags_db == tmp_path / "data" / "../elsewhere/animebot.sqlite"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[quotas]\ncooldown_seconds = inf\n", "quotas.cooldown_seconds: Input should be a finite number"),
        ("[quotas]\ncooldown_seconds = nan\n", "quotas.cooldown_seconds: "),
        ("[quotas]\ncooldown_seconds = 1e300\n", "quotas.cooldown_seconds: Input should be less than or equal to"),
        ("[quotas]\nimages_per_day = 9223372036854775807\n", "quotas.images_per_day: Input should be less"),
        ("[discord]\nadmin_user_ids = [-1]\n", "discord.admin_user_ids.0: Input should be greater"),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nsize_scale = nan\n", "models.x.size_scale: "),
    ],
)
def test_numbers_must_be_finite_and_in_range(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {expected}")


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'data_dir = "data"\n\xff\xfe = 1\n')
    with pytest.raises(ConfigError, match=r"line 2: not valid UTF-8 \(byte 0xff\)"):
        load_config(path)


@pytest.mark.parametrize("key", ["data_dir", "tags.database", "models.x.path"])
def test_a_nul_in_a_path_is_refused(tmp_path: Path, key: str) -> None:
    *tables, name = key.split(".")
    header = f"[{'.'.join(tables)}]\n" if tables else ""
    extra = "family = 'sdxl'\n" if tables[:1] == ["models"] else ""
    path = write(tmp_path, f'{header}{extra}{name} = "a\\u0000b"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {key}: a path cannot contain a NUL character (got 'a\\x00b')"
