"""The bot side (PoolDispatcher) with the worker side's real worker (package W's run_worker: a GpuWorker on the
tiny models behind a RedisJobSource), both on one real redis-server: results with real PNGs and progress, and a
cancel that stops a running job between steps. Skipped until the worker side is merged (bot/core/pool/source.py)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.config import Config, WorkersSettings, parse_config
from bot.core.events import Event, EventBus, JobFinished, JobProgress
from bot.core.jobs import JobOrigin, JobRecord, JobState
from bot.core.pool.dispatcher import PoolDispatcher
from bot.core.queue import JobQueue
from bot.core.quotas import QuotaLimits, Quotas
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, resolve_request
from tests.fakes.redis_server import RedisServer, documented_acl_rules

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bot.core.pool.source") is None, reason="the worker side (bot/core/pool/source.py)"
)
TIMEOUT = 120.0  # a hang detector, not a speed limit


class Bot:
    def __init__(self, config: Config, store: Store, url: str) -> None:
        self.config = config
        self.url = url
        self.events = EventBus()
        self.heard: list[Event] = []
        self.events.listen(self.heard.append)
        quotas = Quotas(store, QuotaLimits(None, None))
        self.queue = JobQueue(store, quotas, config.models, self.events, config.data_dir)
        self.dispatcher = PoolDispatcher(self.queue, lambda: Redis.from_url(url), visibility_timeout=3.0, poll=0.1)

    async def submit(self, owner: str, steps: int = 3, size: str = "64x64", count: int = 2) -> JobRecord:
        request = GenerationRequest("tiny-sdxl", PromptChoices("1girl"), seed=5, steps=steps, size=size, count=count)
        return await self.queue.submit(resolve_request(request, self.config.models, None), JobOrigin(owner))

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    def finished(self, job_id: int) -> list[JobFinished]:
        return [e for e in self.heard if isinstance(e, JobFinished) and e.job_id == job_id]


@pytest.fixture(params=["default user", "documented ACL user"])
async def pool(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Bot]:
    """The bot side and one real worker on one redis-server; logged in as Redis's default user, or as the
    restricted user docs/scaling.md documents (a command missing from its rule fails these tests)."""
    from bot.core.pool.worker_process import run_worker
    from inference.cache import ModelCache
    from inference.specs import RuntimeOptions

    url = redis_server.url
    if request.param == "documented ACL user":
        url = redis_server.add_user("animebot", "pool-secret", documented_acl_rules())
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    store = await Store.open(tmp_path / "bot.sqlite")
    bot = Bot(config, store, url)
    await bot.dispatcher.start()
    cache = ModelCache(RuntimeOptions("cpu", None, tmp_path / "models"), capacity=1, location="cpu")
    settings = WorkersSettings(mode="redis", url=url, visibility_timeout=3.0, heartbeat_interval=0.2)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(config, device=None, models=None, worker_id="gpu-1", stop=stop, settings=settings, cache=cache)
    )
    try:
        yield bot
    finally:
        stop.set()
        await asyncio.wait({worker}, timeout=TIMEOUT)
        await bot.dispatcher.stop()
        await bot.queue.close()
        await store.close()


async def test_a_real_worker_runs_the_jobs_and_the_bot_stores_their_images(pool: Bot) -> None:
    jobs = [await pool.submit("alice"), await pool.submit("bob")]
    for job in jobs:
        await pool.until(lambda job=job: bool(pool.finished(job.id)), f"job {job.id}")  # type: ignore[misc]
        assert pool.finished(job.id) == [JobFinished(job.id, "done")]
        images = await pool.queue.jobs.images(job.id)
        assert [image.index for image in images] == [0, 1]
        assert all((pool.config.data_dir / image.path).read_bytes().startswith(b"\x89PNG") for image in images)
        assert "1girl" in images[0].parameters
    assert any(isinstance(e, JobProgress) for e in pool.heard)
    status = pool.dispatcher.status()
    assert [w.id for w in status.workers] == ["gpu-1"] and "tiny-sdxl" in status.workers[0].loaded


async def test_a_cancel_stops_the_running_job_on_the_worker(pool: Bot) -> None:
    job = await pool.submit("alice", steps=50, size="128x128", count=4)
    await pool.until(lambda: any(isinstance(e, JobProgress) and e.job_id == job.id for e in pool.heard), "progress")
    await pool.queue.cancel(job.id, "alice")
    await pool.dispatcher.cancel(job.id)
    await pool.until(lambda: bool(pool.finished(job.id)), "the cancel")
    assert pool.finished(job.id) == [JobFinished(job.id, "cancelled")]
    steps = [e.step for e in pool.heard if isinstance(e, JobProgress) and e.job_id == job.id]
    assert max(steps) < 50
    assert (await pool.queue.jobs.get(job.id)).state == JobState.CANCELLED  # type: ignore[union-attr]


