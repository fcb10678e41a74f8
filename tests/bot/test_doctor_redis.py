"""`animebot doctor` in redis mode, through the CLI, against a real redis-server: Redis answers PING (the
password never printed), the live workers are listed from their heartbeats, a stopped or locked Redis blocks
`run` with one line saying how to fix it, and no GPU or model check runs on the bot host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.core.pool.protocol import Heartbeat, Keys
from tests.bot.test_doctor import GOOD_TOKEN, doctor, lines_of, make_database, write_config
from tests.fakes.redis_server import MISSING, RedisServer

PASSWORD = "doctor-s3cret"


@pytest.fixture
def pool_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bot host of redis mode: a token, a database, no tag database (a warning)."""
    monkeypatch.setenv("DISCORD_TOKEN", GOOD_TOKEN)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    (tmp_path / "data").mkdir()
    make_database(tmp_path / "data")
    return tmp_path


@pytest.fixture
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not RedisServer.available():
        pytest.skip(MISSING)
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD)
    server.start()
    yield server
    server.stop()


def pool_config(folder: Path, url: str, extra: str = "") -> Path:
    return write_config(folder, f'[workers]\nmode = "redis"\nurl = "{url}"\nprefix = "doc"\n{extra}')


def beat(client: redis.Redis, worker_id: str, **fields: object) -> None:
    keys = Keys("doc")
    client.sadd(keys.workers, worker_id)
    client.set(keys.worker(worker_id), Heartbeat(id=worker_id, **fields).to_bytes(), px=60_000)  # type: ignore[arg-type]


def test_redis_answers_and_live_workers_are_listed(
    capsys: pytest.CaptureFixture[str], pool_install: Path, locked_redis: RedisServer
) -> None:
    client = redis.Redis.from_url(locked_redis.url)
    beat(client, "gpu-box:cuda:0", host="gpu-box", pid=41, device="cuda:0", models=("tiny-sdxl", "anima"),
         loaded=("tiny-sdxl",), busy=(7,), budget=10 * 1024**3)
    beat(client, "gpu-box:cuda:1", host="gpu-box", pid=42, device="cuda:1", models=("tiny-sdxl",))
    client.sadd(Keys("doc").workers, "gone:cuda:0")  # seen once, its heartbeat expired: not listed
    client.close()
    config = pool_config(pool_install, locked_redis.url)  # the password in the URL

    code, lines = doctor(capsys, config)
    assert code == 0, lines
    text = "\n".join(lines)
    assert PASSWORD not in text
    assert lines_of(lines, f"[ok] redis: redis://:***@127.0.0.1:{locked_redis.port}/0: answers PING")
    (first,) = lines_of(lines, "[ok] worker gpu-box:cuda:0: ")
    assert "cuda:0 on gpu-box (pid 41), 10.0 GiB usable; serves tiny-sdxl, anima; holds tiny-sdxl" in first
    assert first.endswith("; running job #7")
    (second,) = lines_of(lines, "[ok] worker gpu-box:cuda:1: ")
    assert "holds nothing; idle" in second
    assert "gone" not in text
    # No GPU, torch or model check on the bot host of redis mode.
    assert not lines_of(lines, "[ok] torch") and not lines_of(lines, "[ok] device") and "model tiny" not in text
    assert lines_of(lines, '[info] workers: mode "redis"')


def test_the_password_from_the_environment(
    capsys: pytest.CaptureFixture[str], pool_install: Path, locked_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://127.0.0.1:{locked_redis.port}/0"
    config = pool_config(pool_install, url)
    code, lines = doctor(capsys, config)
    assert code == 1
    (refused,) = lines_of(lines, "[error] redis: ")
    assert refused.startswith(f"[error] redis: {url}: refused: ")
    assert "-> fix: set the password in REDIS_PASSWORD" in refused

    monkeypatch.setenv("REDIS_PASSWORD", "wrong")
    code, lines = doctor(capsys, config)
    assert code == 1 and lines_of(lines, "[error] redis: ") and "wrong" not in "\n".join(lines)

    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    code, lines = doctor(capsys, config)
    assert code == 0, lines
    assert lines_of(lines, f"[ok] redis: {url}: answers PING") and PASSWORD not in "\n".join(lines)
    (none,) = lines_of(lines, "[warn] workers: no worker online")
    assert "-> fix: start one: `animebot worker --config FILE --device cuda:0`" in none


def test_redis_down_blocks_run_with_a_fix(
    capsys: pytest.CaptureFixture[str], pool_install: Path, locked_redis: RedisServer
) -> None:
    url = locked_redis.url
    locked_redis.stop()
    code, lines = doctor(capsys, pool_config(pool_install, url))
    assert code == 1
    (down,) = lines_of(lines, "[error] redis: ")
    assert f"redis://:***@127.0.0.1:{locked_redis.port}/0: does not answer" in down
    assert "-> fix: start redis-server" in down and PASSWORD not in "\n".join(lines)
    assert lines[-1].startswith("1 problem(s) block `animebot run`")


def test_no_append_only_file_is_a_warning(
    capsys: pytest.CaptureFixture[str], pool_install: Path, locked_redis: RedisServer
) -> None:
    client = redis.Redis.from_url(locked_redis.url)
    client.config_set("appendonly", "no")
    client.close()
    code, lines = doctor(capsys, pool_config(pool_install, locked_redis.url))
    assert code == 0
    (warning,) = lines_of(lines, "[warn] redis: no append-only file")
    assert "-> fix: `appendonly yes` in redis.conf" in warning


def test_local_mode_checks_no_redis(capsys: pytest.CaptureFixture[str], pool_install: Path) -> None:
    code, lines = doctor(capsys, write_config(pool_install))
    assert not lines_of(lines, "[ok] redis") and not lines_of(lines, "[error] redis")
    assert lines_of(lines, "[ok] torch: 2.") and code == 0
