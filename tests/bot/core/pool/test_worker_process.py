"""`animebot worker`: its arguments, and real worker processes on tiny-sdxl serving a simulated bot through a real
redis-server — a SIGTERM stops one cleanly (its heartbeat key deleted), a SIGKILL leaves its job pending for the
same id to finish after a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from bot.cli import main
from bot.config import load_config, parse_config
from bot.core.pool.protocol import Keys
from bot.core.pool.worker_process import (
    WorkerSetupError,
    default_worker_id,
    parse_models,
    served_models,
    worker_id_for,
)
from tests.bot.core.pool.fake_bot import FakeBot, eventually, params
from tests.fakes.redis_server import MISSING, RedisServer

REPO = Path(__file__).resolve().parents[4]
PASSWORD = "w0rker-s3cret"


# -- arguments -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "tiny-sdxl,nope"], "unknown model(s) 'nope' in --models (have: tiny-sdxl, tiny-anima"),
        (["--device", "gpu0"], "--device must be auto, cuda, cuda:N, mps or cpu (got 'gpu0')"),
        (["--id", "my worker"], "invalid worker id 'my worker'"),
        (["--redis-url", "http://127.0.0.1:6379"], "a Redis URL starts with redis:// or rediss://"),
    ],
)
def test_worker_arguments_that_cannot_work_are_one_line_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("animebot: error: ") and message in err and err.count("\n") == 1


def test_the_served_models_and_the_default_id() -> None:
    config = load_config(None)
    assert list(served_models(config, None)) == list(config.models)
    assert list(served_models(config, parse_models(" tiny-anima, ,tiny-anima,"))) == ["tiny-anima"]
    assert parse_models(" , ") is None
    with pytest.raises(WorkerSetupError, match="'x'"):
        served_models(config, ["x"])
    host = socket.gethostname()
    assert default_worker_id("cuda:1") == f"{host}:cuda:1"
    assert default_worker_id(None) == f"{host}:{os.getpid()}"
    assert worker_id_for(None, "cuda:1") == f"{host}:cuda:1"
    assert worker_id_for("gpu-box:1", None) == "gpu-box:1"


def test_a_worker_takes_the_workers_section_and_the_cli_url_over_it(tmp_path: Path) -> None:
    workers = {"mode": "redis", "url": "rediss://r.example:6380/1", "visibility_timeout": 20.0, "prefix": "bot2"}
    settings = parse_config({"workers": workers}, tmp_path).workers
    assert settings.heartbeat == 5.0
    assert settings.with_url(None) is settings
    other = settings.with_url("redis://other/0")
    assert other.url == "redis://other/0" and other.prefix == "bot2" and other.visibility_timeout == 20.0
    with pytest.raises(ValueError, match="redis:// or rediss://") as refused:
        settings.with_url("http://:s3cret@host/0")
    assert "s3cret" not in str(refused.value)


# -- real worker processes -----------------------------------------------------------------------------------


@pytest.fixture
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not RedisServer.available():
        pytest.skip(MISSING)
    with RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD) as server:
        yield server


@pytest.fixture
async def bot(redis_with_password: RedisServer) -> AsyncIterator[FakeBot]:
    client = redis.Redis.from_url(redis_with_password.url)
    yield FakeBot(client)
    await client.aclose()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "animebot.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    return path


class WorkerProcess:
    def __init__(self, config: Path, worker_id: str, url: str, log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("DISCORD_TOKEN", None)  # it needs none
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "worker", "--config", str(config), "--id", worker_id,
                 "--redis-url", url],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.kill()


async def start(
    processes: list[WorkerProcess], bot: FakeBot, config: Path, worker_id: str, server: RedisServer, log: Path
) -> WorkerProcess:
    process = WorkerProcess(config, worker_id, server.url, log)
    processes.append(process)

    async def announced() -> bool:
        assert process.process.poll() is None, process.text()
        return await bot.heartbeat(worker_id) is not None

    await eventually(announced, f"{worker_id}'s heartbeat")
    return process


async def test_a_worker_process_serves_jobs_and_stops_cleanly_on_sigterm(
    processes: list[WorkerProcess], bot: FakeBot, config_file: Path, redis_with_password: RedisServer,
    tmp_path: Path,
) -> None:
    process = await start(processes, bot, config_file, "w1", redis_with_password, tmp_path / "w1.log")
    heartbeat = await bot.heartbeat("w1")
    assert heartbeat is not None and heartbeat.pid == process.process.pid and heartbeat.device == "cpu"
    job = await bot.dispatch("w1", 1, params(steps=2, seeds=(11,)))
    result, pngs = await bot.result(1)
    assert (result.outcome, result.token, [i.seed for i in result.images]) == ("done", job.token, [11])
    assert pngs[0].startswith(b"\x89PNG")
    await eventually(lambda: _nothing_pending(bot, "w1"), "the entry acknowledged")
    process.process.send_signal(signal.SIGTERM)
    assert process.wait() == 0, process.text()
    assert await bot.heartbeat("w1") is None  # deleted at once: the bot need not wait for it to expire
    log = process.text()
    assert "worker w1: device cpu, models tiny-sdxl, tiny-anima" in log
    assert f"redis://:***@127.0.0.1:{redis_with_password.port}/0" in log and PASSWORD not in log
    assert "job 1: started" in log and "job 1: done" in log and "worker w1: stopped" in log
    assert not (config_file.parent / "data" / "animebot.sqlite").exists()  # no database, no lock


async def _nothing_pending(bot: FakeBot, worker: str) -> bool:
    return await bot.pending(worker) == []


async def test_a_killed_worker_leaves_its_job_pending_and_finishes_it_when_restarted(
    processes: list[WorkerProcess], bot: FakeBot, config_file: Path, redis_with_password: RedisServer,
    tmp_path: Path,
) -> None:
    process = await start(processes, bot, config_file, "w2", redis_with_password, tmp_path / "w2.log")
    await bot.dispatch("w2", 7, params(steps=80))

    async def running() -> bool:
        return any(e.kind == "progress" for e in await bot.events(7))

    await eventually(running, "the job's first step")
    process.process.send_signal(signal.SIGKILL)
    process.wait()
    pending = await bot.pending("w2")
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(b"w2", 1)]
    # Its heartbeat outlives it until the visibility timeout: then the bot's reaper takes the job.
    assert await bot.client.pttl(Keys().worker("w2")) > 0
    assert await bot.all_results() == []
    # Restarted with the same id, the worker finishes what it had read.
    await start(processes, bot, config_file, "w2", redis_with_password, tmp_path / "w2-again.log")
    result, pngs = await bot.result(7, timeout=600)
    assert result.outcome == "done" and len(pngs) == 1
    await eventually(lambda: _nothing_pending(bot, "w2"), "the entry acknowledged")
    assert [r[0].job_id for r in await bot.all_results()] == [7]


def test_a_device_that_is_not_there_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    # Nothing listens on the URL: the device is checked before Redis is needed.
    assert main(["worker", "--device", "cuda:1", "--redis-url", "redis://127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert "animebot: error: device 'cuda:1' was asked for but CUDA is not available" in err
