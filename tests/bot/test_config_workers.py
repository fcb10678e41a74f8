"""[workers] (the Redis worker pool) and [discord] shards in the config file: defaults, the documented example,
and one clear line naming the key for each bad value, never echoing a password."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, DiscordSettings, WorkersSettings, load_config, mask_url

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_local_mode_and_one_connection(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    workers = config.workers
    assert workers.mode == "local" and workers.url == "redis://127.0.0.1:6379/0"
    assert workers.visibility_timeout == 60 and workers.heartbeat == 15 and workers.max_result_bytes == 64 * 2**20
    assert workers.prefix == "animebot" and workers.password({}) is None
    assert config.discord.shards == 0


def test_example_documents_workers_and_shards() -> None:
    config = load_config(REPO / "config.example.toml")
    assert config.workers == WorkersSettings() and config.discord.shards == 0
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert "[workers]" in text and "docs/scaling.md" in text and "REDIS_PASSWORD" in text
    for key in WorkersSettings.model_fields:
        assert re.search(rf"\b{key}\b", text), f"config.example.toml does not mention {key}"
    assert re.search(r"^shards = 0$", text, re.M) and "shards" in DiscordSettings.model_fields


def test_redis_mode_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[workers]
mode = "redis"
url = "rediss://bot:pa:ss@redis.internal:6380/2"
visibility_timeout = 8
heartbeat_interval = 1.5
max_result_mb = 16
prefix = "bot-2"
[discord]
shards = "auto"
"""))
    w = config.workers
    assert w.mode == "redis" and w.heartbeat == 1.5 and w.max_result_bytes == 16 * 2**20 and w.prefix == "bot-2"
    assert w.password({"REDIS_PASSWORD": "other"}) == "pa:ss"  # the URL's wins
    assert w.display_url == "rediss://bot:***@redis.internal:6380/2" and "pa:ss" not in w.display_url
    assert config.discord.shards == "auto"
    assert load_config(write(tmp_path, "[workers]\nvisibility_timeout = 10\n")).workers.heartbeat == 2.5


def test_password_from_the_environment(tmp_path: Path) -> None:
    w = load_config(write(tmp_path, '[workers]\nmode = "redis"\nurl = "redis://10.0.0.5:6379"\n')).workers
    assert w.password({"REDIS_PASSWORD": "s3cret"}) == "s3cret" and w.password({}) is None
    assert w.display_url == "redis://10.0.0.5:6379"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[workers]\nmode = 'celery'\n", "workers.mode: Input should be 'local' or 'redis'"),
        ("[workers]\nurl = 'http://:hunter2@h:6379'\n", "workers: url: must start with redis:// or rediss://"),
        ("[workers]\nurl = 'redis://:hunter2@h:99999'\n", "workers: url: not a valid URL"),
        ("[workers]\nurl = 'redis://:hunter2@/0'\n", "workers: url: names no host"),
        ("[workers]\nurl = 6379\n", "workers: url: must be a string"),
        ("[workers]\nvisibility_timeout = 0\n", "workers.visibility_timeout: Input should be greater than 0"),
        ("[workers]\nvisibility_timeout = -5\n", "workers.visibility_timeout: Input should be greater than 0"),
        ("[workers]\nheartbeat_interval = 0\n", "workers.heartbeat_interval: Input should be greater than 0"),
        (
            "[workers]\nvisibility_timeout = 10\nheartbeat_interval = 10\n",
            "workers: heartbeat_interval must be shorter",
        ),
        ("[workers]\nmax_result_mb = 0\n", "workers.max_result_mb: Input should be greater than 0"),
        ("[workers]\nprefix = 'my bot'\n", "workers.prefix: must be 1 to 100 letters, digits or ._:@-"),
        ("[workers]\nprefix = ''\n", "workers.prefix: must be 1 to 100"),
        ("[workers]\npassword = 'x'\n", "workers.password: unknown key"),
        ("[discord]\nshards = 'many'\n", 'discord.shards: must be "auto" or a number of shards'),
        ("[discord]\nshards = -1\n", 'discord.shards: must be "auto" or a number of shards'),
        ("[discord]\nshards = true\n", 'discord.shards: must be "auto" or a number of shards'),
        ("[discord]\nshards = 2.5\n", 'discord.shards: must be "auto" or a number of shards'),
    ],
)
def test_bad_values_give_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message, message
    assert len(message.splitlines()) == 1 and "hunter2" not in message


def test_the_cli_names_the_key_and_hides_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nmode = 'redis'\nurl = 'redis+socket://:hunter2@localhost'\n")
    done = subprocess.run(
        [sys.executable, "-m", "bot", "models", "--config", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2
    assert "workers: url: must start with redis:// or rediss://" in done.stderr and "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:pw@[::1]:6380", "rediss://user:***@[::1]:6380"),
        ("redis://h", "redis://h"),
        ("redis://user@h", "redis://user@h"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
