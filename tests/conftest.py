"""Test-wide settings, and `--long`: the fuzz, property and crash tests run long (by hand, not in CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fakes.redis_server import MISSING, RedisServer

# The tiny models gain nothing from a second thread, and on a small shared CPU (CI has 2 cores) torch's
# thread pool slows them several times over when other work runs. Subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the fuzz, property and crash tests long (the same as ANIMEBOT_FUZZ_LONG=1; see tests/fuzz.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Before collection, so the test modules that read it at import see it.
    if config.getoption("--long"):
        os.environ["ANIMEBOT_FUZZ_LONG"] = "1"


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port (tests/fakes/redis_server.py), stopped after the test."""
    if not RedisServer.available():
        pytest.skip(MISSING)
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
