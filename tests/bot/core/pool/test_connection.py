"""Connecting to the pool's Redis: URLs checked, passwords from the URL or REDIS_PASSWORD and never logged, TLS
verified by default, and "cannot reach Redis" always the same exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.pool.connection import RedisUnavailable, check_url, connect, describe_url, reachable
from tests.fakes.redis_server import RedisServer, free_port


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://bot:s3cret@redis.example:6380/2", "rediss://bot:***@redis.example:6380/2"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://host/0?password=s3cret&db=1", "redis://host/0?password=***&db=1"),
    ],
)
def test_describe_url_masks_the_password(url: str, shown: str) -> None:
    assert describe_url(url) == shown
    assert "s3cret" not in describe_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://host:6379", "redis:// or rediss://"),
        ("host:6379", "redis:// or rediss://"),
        ("redis://", "no host"),
        ("redis://host:port/0", "not a Redis URL"),
        ("redis://:s3cret@host:99999/0", "not a Redis URL"),
    ],
)
def test_a_url_that_is_not_redis_is_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        connect(url)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ValueError):
        check_url(url)


async def test_tls_verifies_the_certificate_and_the_host_name() -> None:
    client = connect("rediss://redis.example:6380/0")
    options = client.connection_pool.connection_kwargs
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True
    await client.aclose()


async def test_the_password_comes_from_the_url_or_redis_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    with RedisServer(tmp_path / "redis", password="s3cret") as server:
        bare = f"redis://127.0.0.1:{server.port}/0"
        monkeypatch.delenv("REDIS_PASSWORD", raising=False)
        without = connect(bare)
        with pytest.raises(RedisUnavailable), reachable():  # refused: counted as "cannot reach Redis"
            await without.ping()
        await without.aclose()
        from_url = connect(server.url)
        assert await from_url.ping()
        await from_url.aclose()
        monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
        from_env = connect(bare)
        assert await from_env.ping()
        await from_env.aclose()


async def test_a_server_that_is_not_there_is_redis_unavailable() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnavailable, match="ping"), reachable("ping"):
        await client.ping()
    await client.aclose()
