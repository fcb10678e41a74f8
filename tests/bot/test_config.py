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
    SafetySettings,
    Settings,
    TagSettings,
    load_config,
)
from inference.specs import (
    BuiltinSource,
    ComfyUISource,
    DirSource,
    HubSource,
    SingleFileSource,
    VaeFileSource,
)

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
    assert config.safety == SafetySettings(rate_results=True, sensitive="spoiler")
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    sections = (Settings, InferenceSettings, TagSettings, QuotaSettings, ModelSettings, ComfyUIFiles, SafetySettings)
    for section in sections:
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


def test_memory_modes_vae_and_compile(tmp_path: Path) -> None:
    """[inference] memory / compile are every model's default (the built-ins' too), a model's own keys win;
    vram_limit_gb is bytes for the runtime; `vae` is a hub id, a folder or a file, relative to the config."""
    (tmp_path / "vaes" / "fp16-fix").mkdir(parents=True)
    (tmp_path / "vaes" / "fix.safetensors").write_bytes(b"")
    path = write(tmp_path, """
[inference]
memory = "balanced"
vram_limit_gb = 7.5
compile = true
[models.hub]
family = "sdxl"
hub = "cagliostrolab/animagine-xl-4.0"
vae = "madebyollin/sdxl-vae-fp16-fix"
memory = "minimal"
compile = false
[models.dir]
family = "sdxl"
path = "weights/a31"
vae = "vaes/fp16-fix"
[models.file]
family = "sdxl"
file = "ckpt/a.safetensors"
vae = "vaes/fix.safetensors"
memory = "auto"
""")
    config = load_config(path)
    hub, folder, file = config.models["hub"], config.models["dir"], config.models["file"]
    assert (hub.memory, hub.compile, hub.vae) == ("minimal", False, HubSource("madebyollin/sdxl-vae-fp16-fix"))
    assert (folder.memory, folder.compile, folder.vae) == ("balanced", True, DirSource(tmp_path / "vaes/fp16-fix"))
    assert (file.memory, file.vae) == ("auto", VaeFileSource(tmp_path / "vaes/fix.safetensors"))
    assert (config.models["tiny-sdxl"].memory, config.models["tiny-sdxl"].compile) == ("balanced", True)
    assert config.models["tiny-sdxl"].vae is None
    assert config.vram_limit == int(7.5 * 1024**3)


def test_defaults_are_auto_no_limit_no_compile(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[models.x]\nfamily = 'sdxl'\nhub = 'a/b'\n"))
    assert config.vram_limit is None
    assert all((s.memory, s.compile, s.vae) == ("auto", False, None) for s in config.models.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[inference]\nmemory = 'lowest'\n", "inference.memory: Input should be 'auto', 'high', 'balanced', 'low'"),
        ("[inference]\nvram_limit_gb = -1\n", "inference.vram_limit_gb: Input should be greater than or equal to 0"),
        ("[inference]\nvram_limit_gb = nan\n", "inference.vram_limit_gb: Input should be a finite number"),
        ("[inference]\nvram_limit_gb = '8GB'\n", "inference.vram_limit_gb: Input should be a valid number"),
        ("[inference]\ncompile = 'yes'\n", "inference.compile: Input should be a valid boolean"),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nmemory = 'max'\n", "models.x.memory: Input should be"),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nvae = 'missing.safetensors'\n", "models.x.vae: no such file: "),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nvae = './vaes/none'\n", "models.x.vae: no such folder, and not a hub"),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nvae = 'a/b/c'\n", "models.x.vae: no such folder, and not a hub"),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nvae = 'config.toml'\n", "models.x.vae: not a .safetensors file nor"),
        ("[models.x]\nbuiltin = 'tiny-sdxl'\nvae = \"a\\u0000b\"\n", "models.x.vae: a path cannot contain a NUL"),
    ],
)
def test_bad_memory_settings_give_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message


def test_safety_defaults_are_safe_and_a_bad_value_is_refused(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'data_dir = "data"\n')).safety == SafetySettings()
    assert SafetySettings().rate_results is True and SafetySettings().sensitive == "spoiler"
    with pytest.raises(ConfigError, match="sensitive"):
        load_config(write(tmp_path, '[safety]\nsensitive = "show"\n'))
