"""Connecting to the pool's Redis: redis:// or rediss:// (TLS, certificates verified), the password from the URL
or the REDIS_PASSWORD environment variable, timeouts short enough that an outage is noticed in seconds.

Both sides (the bot's dispatcher and the worker processes) connect through here, and both treat the same errors
as "Redis cannot be reached now" (RedisUnavailable): they wait and try again, nothing is lost meanwhile."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SCHEMES = ("redis", "rediss")
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
# Seconds to wait for a reply. Longer than the longest BLOCK the pool uses (a worker's inbox read blocks
# BLOCK_MS), so a blocking read is never taken for a dead connection.
SOCKET_TIMEOUT = 10.0
HEALTH_CHECK_INTERVAL = 30  # seconds: an idle connection is PINGed before use after this long
# A command is retried twice, quickly, on a dropped connection (a Redis restart, a failover); after that the
# caller sees RedisUnavailable and retries in its own rhythm (redis-py's default of 10 retries would hold every
# caller for seconds per command while Redis is down).
RETRIES = 2

# What "Redis cannot be reached" looks like from redis-py (BusyLoadingError, Redis reading its append-only file
# after a restart, and AuthenticationError are ConnectionErrors too).
UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisUnavailable(Exception):
    """Redis cannot be reached now (down, restarting, the network, a wrong password): try again later."""


@contextlib.contextmanager
def reachable(what: str = "Redis") -> Iterator[None]:
    """Turns redis-py's connection errors (and OSError) raised inside into RedisUnavailable."""
    try:
        yield
    except UNREACHABLE as e:
        raise RedisUnavailable(f"{what}: {type(e).__name__}: {e}"[:300]) from e


def check_url(url: str) -> str:
    """`url` if it is a redis:// or rediss:// URL with a host, else ValueError (a one-line reason)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (a port that is not a number raises ValueError here)
    except ValueError as e:
        raise ValueError(f"not a Redis URL ({e}): {describe_url(url)}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"a Redis URL starts with redis:// or rediss:// (TLS): {describe_url(url)}")
    if not host:
        raise ValueError(f"the Redis URL has no host: {describe_url(url)}")
    return url


def connect(url: str, password_env: str = "REDIS_PASSWORD") -> redis.Redis:
    """A client for `url` (nothing is sent yet: the first command connects). The password is the URL's, or else
    the environment variable `password_env`'s. rediss:// verifies the server's certificate and host name.
    Replies are bytes (decode_responses=False). ValueError for a URL that is not redis:// or rediss://."""
    check_url(url)
    options: dict[str, Any] = {}
    if not urlsplit(url).password and os.environ.get(password_env):
        options["password"] = os.environ[password_env]
    if urlsplit(url).scheme == "rediss":
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        protocol=2,  # the replies' shapes the pool parses (XREADGROUP: [[stream, [(id, fields), ...]]])
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), RETRIES),
        **options,
    )


def describe_url(url: str) -> str:
    """`url` with its password masked, for logs: redis://:***@host:6379/0."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<not a URL>"
    if password:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:  # redis-py also reads ?password=...
        parts = parts._replace(query=re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query))
    return urlunsplit(parts)
