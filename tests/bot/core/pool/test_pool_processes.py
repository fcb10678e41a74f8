"""The worker pool end to end, with real processes as users run it: the bot's GenerationService in redis mode
(in this process: SQLite, the fair queue, the PoolDispatcher), `python -m bot worker` processes on the tiny
models, and a real redis-server on a free 127.0.0.1 port (tests/fakes/redis_server.py).

What a user must never see, each checked here: a lost job, a job finished twice, a result of a job that was
cancelled, a job that waits while a worker idles. Workers are killed with SIGKILL mid-job, Redis is
restarted, the bot is restarted, a cancel crosses processes, and jobs go to the worker that holds their model.

Worker processes import torch and build the tiny models: each takes seconds to start on a loaded 2-core machine,
so the tests share a few workers per test and keep images at 64x64."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from bot.config import load_config
from bot.core.events import JobProgress
from bot.core.jobs import JobState
from bot.core.service import GenerationService
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from tests.fakes.redis_server import RedisServer, documented_acl_rules

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO = Path(__file__).resolve().parents[4]
TIMEOUT = 240.0  # seconds for one phase (a worker's start is ~5-15 s on a loaded 2-core machine)
VISIBILITY = 2.0  # the pool's visibility timeout in these tests


def request(i: int, *, model: str = "tiny-sdxl", steps: int = 4, count: int = 1) -> GenerationRequest:
    choices = PromptChoices(f"1girl, pool job {i}")
    return GenerationRequest(model, choices, seed=100 + i, steps=steps, size="64x64", count=count)


@dataclass
class Pool:
    """The config on disk, the Redis server, and the worker processes started so far."""

    config_path: Path
    data_dir: Path
    redis: RedisServer
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, worker_id: str, *models: str) -> None:
        args = [sys.executable, "-m", "bot", "worker", "--config", str(self.config_path), "--id", worker_id]
        if models:
            args += ["--models", ",".join(models)]
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        log = open(self.data_dir / f"{worker_id}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.workers[worker_id] = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill_worker(self, worker_id: str) -> None:
        process = self.workers.pop(worker_id)
        process.kill()
        process.wait()

    def stop_all(self) -> None:
        for process in self.workers.values():
            process.terminate()
        for process in self.workers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers.clear()

    def log(self, worker_id: str) -> str:
        return (self.data_dir / f"{worker_id}.log").read_text(errors="replace")[-3000:]

    def rows(self) -> dict[int, sqlite3.Row]:
        """Every job's row, read from the bot's database with a read-only connection."""
        path = self.data_dir / "animebot.sqlite"
        if not path.exists():
            return {}
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            try:
                return {row["id"]: row for row in db.execute("SELECT id, state, attempts, claimed_by FROM jobs")}
            except sqlite3.OperationalError:  # the bot is creating its tables
                return {}


@pytest.fixture
def pool(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer, shared_models: Path
) -> Iterator[Pool]:
    """The config on disk. A test marked `acl_user` runs as the restricted Redis user docs/scaling.md documents."""
    url = redis_server.url
    if request.node.get_closest_marker("acl_user") is not None:
        url = redis_server.add_user("animebot", "pool-secret", documented_acl_rules())
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_models, target_is_directory=True)
    config = tmp_path / "config.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        '[inference]\ndevice = "cpu"\ndefault_model = "tiny-sdxl"\n'
        "[tags]\nimport_default = false\n"
        "[safety]\nrate_results = false\n"
        "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"
        f'[workers]\nmode = "redis"\nurl = "{url}"\nvisibility_timeout = {VISIBILITY}\n'
        "heartbeat_interval = 0.25\n",
        encoding="utf-8",
    )
    pool = Pool(config, data, redis_server)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture
async def bot(pool: Pool) -> AsyncIterator[GenerationService]:
    service = GenerationService(load_config(pool.config_path))
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def until(condition, what: str, pool: Pool | None = None) -> None:  # type: ignore[no-untyped-def]
    """Poll `condition` (sync or async) until true; fail after TIMEOUT with the workers' logs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            logs = "" if pool is None else "\n".join(f"--- {w}\n{pool.log(w)}" for w in pool.workers)
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        await asyncio.sleep(0.05)


def online(service: GenerationService, *worker_ids: str) -> bool:
    status = service.executor_status()
    return status.online and {w.id for w in status.workers} >= set(worker_ids)


def check_images(service: GenerationService, pool: Pool, job_id: int, count: int) -> None:
    """The job's images are on disk, once each, and open as the size asked."""
    images = pool.data_dir / "images"
    files = sorted(images.rglob(f"{job_id}-*.png"))
    assert len(files) == count, files
    for path in files:
        with Image.open(path) as image:
            assert image.size == (64, 64)


async def test_two_workers_serve_one_queue_fairly_and_every_job_once(pool: Pool, bot: GenerationService) -> None:
    # No worker yet: the jobs wait, and the service says so.
    assert bot.waiting_for_worker()
    jobs = [await bot.submit(request(i, count=1 + i % 2), f"cli:user{i % 2}") for i in range(6)]
    await asyncio.sleep(1.0)
    assert all(row["state"] == "queued" for row in pool.rows().values())

    pool.start_worker("w1")
    pool.start_worker("w2")
    await until(lambda: online(bot, "w1", "w2"), "two workers online", pool)
    finished = [await asyncio.wait_for(bot.wait(job.id), TIMEOUT) for job in jobs]
    assert [job.state for job in finished] == [JobState.DONE] * 6
    rows = pool.rows()
    assert {rows[job.id]["claimed_by"] for job in jobs} == {"w1", "w2"}  # both worked
    assert all(rows[job.id]["attempts"] == 1 for job in jobs)  # and nothing ran twice
    for i, job in enumerate(jobs):
        check_images(bot, pool, job.id, 1 + i % 2)
        assert len(await bot.images(job.id)) == 1 + i % 2


@pytest.mark.acl_user  # dispatch, results, events, heartbeats, the reaper: all with the documented ACL rule
async def test_a_worker_killed_mid_job_is_replaced_after_the_visibility_timeout(
    pool: Pool, bot: GenerationService
) -> None:
    pool.start_worker("w1")
    await until(lambda: online(bot, "w1"), "w1 online", pool)
    job = await bot.submit(request(1, steps=150, count=4), "cli:a")  # long enough to be killed mid-job
    inbox = bot.events.follow(job.id)
    try:
        while not isinstance(await asyncio.wait_for(inbox.get(), TIMEOUT), JobProgress):
            pass
    finally:
        bot.events.unfollow(job.id, inbox)
    pool.kill_worker("w1")  # SIGKILL: no goodbye, its heartbeat just stops
    pool.start_worker("w2")
    done = await asyncio.wait_for(bot.wait(job.id), TIMEOUT)
    assert done.state == JobState.DONE
    row = pool.rows()[job.id]
    assert row["claimed_by"] == "w2" and row["attempts"] == 2
    check_images(bot, pool, job.id, 4)


async def test_redis_restarted_while_jobs_run_loses_nothing(pool: Pool, bot: GenerationService) -> None:
    pool.start_worker("w1")
    await until(lambda: online(bot, "w1"), "w1 online", pool)
    jobs = [await bot.submit(request(i, steps=30), "cli:a") for i in range(3)]
    await until(lambda: pool.rows()[jobs[0].id]["state"] == "running", "the first job running", pool)
    pool.redis.restart()  # SIGTERM + start: the append-only file brings every stream back
    more = await bot.submit(request(9), "cli:b")  # accepted while the pool reconnects
    for job in [*jobs, more]:
        assert (await asyncio.wait_for(bot.wait(job.id), TIMEOUT)).state == JobState.DONE
        check_images(bot, pool, job.id, 1)


async def test_redis_down_jobs_are_stored_and_dispatched_when_it_returns(pool: Pool, bot: GenerationService) -> None:
    pool.start_worker("w1")
    await until(lambda: online(bot, "w1"), "w1 online", pool)
    pool.redis.kill()
    await until(lambda: not bot.executor_status().online, "the pool to see Redis down")
    job = await bot.submit(request(5), "cli:a")  # stored in SQLite; the user is told it waits
    assert bot.waiting_for_worker()
    pool.redis.start()
    assert (await asyncio.wait_for(bot.wait(job.id), TIMEOUT)).state == JobState.DONE


async def test_a_cancel_crosses_processes_and_the_worker_goes_on(pool: Pool, bot: GenerationService) -> None:
    pool.start_worker("w1")
    await until(lambda: online(bot, "w1"), "w1 online", pool)
    long = await bot.submit(request(1, steps=150, count=4), "cli:a")
    after = await bot.submit(request(2), "cli:a")
    await until(lambda: long.id in bot.executor_status().running, "the long job running", pool)
    await bot.cancel(long.id, "cli:a")
    assert (await asyncio.wait_for(bot.wait(long.id), TIMEOUT)).state == JobState.CANCELLED
    assert (await asyncio.wait_for(bot.wait(after.id), TIMEOUT)).state == JobState.DONE
    assert not list((pool.data_dir / "images").rglob(f"{long.id}-*.png"))


async def test_jobs_go_to_the_worker_that_holds_their_model(pool: Pool, bot: GenerationService) -> None:
    pool.start_worker("w1")
    pool.start_worker("w2")
    await until(lambda: online(bot, "w1", "w2"), "two workers online", pool)
    first = await bot.submit(request(1, model="tiny-anima"), "cli:a")
    await asyncio.wait_for(bot.wait(first.id), TIMEOUT)
    holder = pool.rows()[first.id]["claimed_by"]
    await until(
        lambda: any("tiny-anima" in w.loaded and w.id == holder for w in bot.executor_status().workers),
        "the heartbeat to say who holds tiny-anima",
        pool,
    )
    for i in range(3):  # one at a time: both workers are idle each time, the holder is preferred
        job = await bot.submit(request(10 + i, model="tiny-anima"), "cli:a")
        await asyncio.wait_for(bot.wait(job.id), TIMEOUT)
        assert pool.rows()[job.id]["claimed_by"] == holder


# -- the bot killed with SIGKILL and restarted -------------------------------------------------------------


async def child_bot(config_path: Path, jobs: int) -> None:
    """The bot process of the restart test: start, submit `jobs` jobs, serve until killed."""
    service = GenerationService(load_config(config_path))
    await service.start()
    for i in range(jobs):
        await service.submit(request(i, steps=60, count=2), f"cli:user{i % 2}")
    print("submitted", flush=True)
    await asyncio.Event().wait()


async def test_the_bot_killed_and_restarted_loses_nothing_and_runs_nothing_twice(pool: Pool) -> None:
    pool.start_worker("w1")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bot.core.pool.test_pool_processes", str(pool.config_path), "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        await until(
            lambda: any(row["state"] == "done" for row in pool.rows().values())
            and any(row["state"] == "running" for row in pool.rows().values()),
            "one job done and the next running",
            pool,
        )
    finally:
        child.kill()  # SIGKILL: the dispatcher never says goodbye; w1 keeps running its job
        child.wait()
    before = pool.rows()
    service = GenerationService(load_config(pool.config_path))
    await service.start()
    try:
        finished = [await asyncio.wait_for(service.wait(job_id), TIMEOUT) for job_id in sorted(before)]
        assert [job.state for job in finished] == [JobState.DONE] * 4
        after = pool.rows()
        for job_id, row in before.items():
            # What had finished is left alone, what ran on the live worker is not run again, and nothing
            # was handed out twice.
            assert after[job_id]["attempts"] == 1, (job_id, dict(row), dict(after[job_id]))
            check_images(service, pool, job_id, 2)
            assert len(await service.images(job_id)) == 2
    finally:
        await service.close()


if __name__ == "__main__":
    asyncio.run(child_bot(Path(sys.argv[1]), int(sys.argv[2])))
