"""[loras] in the config file: defaults, the documented example, and one clear line per bad value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, LoraSettings, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'data_dir = "data"\n'))
    assert config.loras == LoraSettings(directory="loras", max_per_job=3, max_weight=2.0)
    assert config.loras_dir == tmp_path / "data" / "loras"
    assert config.lora_hash_cache == tmp_path / "data" / "lora-hashes.json"


def test_the_example_documents_every_key() -> None:
    example = tomllib.loads((REPO / "config.example.toml").read_text(encoding="utf-8"))["loras"]
    assert set(example) == set(LoraSettings.model_fields)
    assert LoraSettings(**example) == LoraSettings()


def test_an_absolute_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f'[loras]\ndirectory = "{tmp_path / "elsewhere"}"\nmax_per_job = 0\n'))
    assert config.loras_dir == tmp_path / "elsewhere" and config.loras.max_per_job == 0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_per_job = 5", "loras.max_per_job"),
        ("max_per_job = -1", "loras.max_per_job"),
        ("max_weight = 0", "loras.max_weight"),
        ("max_weight = inf", "loras.max_weight"),
        ('directory = "a\\u0000b"', "loras.directory"),
        ("colour = 1", "loras.colour"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, f"[loras]\n{text}\n"))
