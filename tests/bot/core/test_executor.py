"""The service's executor (bot/core/executor.py): the in-process worker of local mode seen through the Executor
protocol, and redis mode with a stand-in for the pool dispatcher (tests/fakes/pool_executor.py): jobs are
queued while no worker is online, jobs left running are not requeued at start (the dispatcher reconciles
them), cancel and drain go through the executor, the pre-flight check asks it, and no torch is loaded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot.config import load_config
from bot.core.errors import UserError
from bot.core.events import JobProgress
from bot.core.executor import LocalExecutor
from bot.core.jobs import JobState
from bot.core.service import GenerationService
from tests.bot.conftest import ServiceFactory, request
from tests.fakes.pool_executor import FakePool, worker

REPO = Path(__file__).resolve().parents[3]
REDIS_CONFIG = """data_dir = "data"
[tags]
import_default = false
[quotas]
images_per_day = 0
max_queued_jobs = 0
[workers]
mode = "redis"
url = "redis://:s3cret@127.0.0.1:6399/0"
[models.tiny]
builtin = "tiny-sdxl"
size_scale = 0.0625
"""
PoolFactory = Callable[..., Awaitable[tuple[GenerationService, FakePool]]]


@pytest.fixture
async def make_pool_service(tmp_path: Path) -> AsyncIterator[PoolFactory]:
    """A started redis-mode service whose executor is a FakePool (its workers and Redis's state set by the test)."""
    services: list[GenerationService] = []

    async def make(*, online: bool = True, workers: tuple[str, ...] = ()) -> tuple[GenerationService, FakePool]:
        path = tmp_path / "config.toml"
        path.write_text(REDIS_CONFIG, encoding="utf-8")
        pools: list[FakePool] = []

        def factory(service: GenerationService) -> FakePool:
            pools.append(FakePool(service, tuple(worker(w) for w in workers), online))
            return pools[0]

        service = GenerationService(load_config(path), executor_factory=factory)
        await service.start()
        services.append(service)
        return service, pools[0]

    yield make
    for service in services:
        await service.close()


async def test_local_status_shows_the_worker_its_models_and_the_running_job(make_service: ServiceFactory) -> None:
    """Local mode: one in-process worker (its device, the configured models, what its cache holds) and the job
    it runs now, in the executor's status."""
    service = await make_service()
    assert isinstance(service.executor, LocalExecutor) and service.worker is service.executor.worker
    before = service.executor_status()
    assert before.mode == "local" and before.online and before.running == {}
    (me,) = before.workers
    assert me.local and me.device == "cpu" and me.busy_job is None and me.budget is None
    assert set(me.models) == set(service.config.models) and me.loaded == ()
    assert not service.waiting_for_worker()

    started = asyncio.Event()
    service.events.listen(lambda e: started.set() if isinstance(e, JobProgress) else None)
    job = await service.submit(request(steps=60), "alice")
    await asyncio.wait_for(started.wait(), 120)
    during = service.executor_status()
    assert during.running == {job.id: me.id} and during.workers[0].busy_job == job.id
    assert during.workers[0].loaded == ("tiny-sdxl",)
    await service.cancel(job.id, "alice")
    assert (await asyncio.wait_for(service.wait(job.id), 120)).state == JobState.CANCELLED


async def test_redis_mode_queues_jobs_while_no_worker_is_online(make_pool_service: PoolFactory) -> None:
    service, pool = await make_pool_service(online=True, workers=())
    assert pool.started and service.waiting_for_worker()
    job = await service.submit(request(model="tiny"), "alice")
    assert job.state == JobState.QUEUED and await service.position(job.id) == 1


async def test_redis_mode_queues_jobs_while_redis_is_down(make_pool_service: PoolFactory) -> None:
    service, pool = await make_pool_service(online=False, workers=("gpu-a:cuda:0",))
    assert service.waiting_for_worker() and service.executor_status().workers == ()
    job = await service.submit(request(model="tiny"), "alice")
    assert job.state == JobState.QUEUED
    pool.online = True
    assert not service.waiting_for_worker()


async def test_redis_mode_does_not_requeue_running_jobs_at_start(tmp_path: Path) -> None:
    """A job a worker runs while the bot restarts stays running (the dispatcher asks Redis whether its worker
    is alive); local mode's start queues such leftovers again."""
    path = tmp_path / "config.toml"
    path.write_text(REDIS_CONFIG, encoding="utf-8")
    config = load_config(path)
    pools: list[FakePool] = []

    def factory(service: GenerationService) -> FakePool:
        pools.append(FakePool(service, (worker("gpu-a"),)))
        return pools[-1]

    first = GenerationService(config, executor_factory=factory)
    await first.start()
    job = await first.submit(request(model="tiny"), "alice")
    assert await pools[0].take("gpu-a") == job.id
    await first.close()
    assert pools[0].stopped

    again = GenerationService(config, executor_factory=factory)
    await again.start()
    try:
        assert again.interrupted == [] and await again.running_jobs() == [job.id]
    finally:
        await again.close()

    # The same database in local mode: the job is queued again, as a crash leftover.
    local = tmp_path / "local.toml"
    local.write_text(REDIS_CONFIG.replace('mode = "redis"', 'mode = "local"'), encoding="utf-8")
    third = GenerationService(load_config(local), executor_factory=factory)
    await third.start()
    try:
        assert third.interrupted == [job.id] and await third.running_jobs() == []
    finally:
        await third.close()


async def test_cancel_and_drain_go_through_the_executor(make_pool_service: PoolFactory) -> None:
    service, pool = await make_pool_service(workers=("gpu-a",))
    job = await service.submit(request(model="tiny"), "alice")
    await pool.take("gpu-a")
    record = await service.cancel(job.id, "alice")
    assert record.state == JobState.RUNNING and pool.cancelled == [job.id]
    assert service.executor_status().running == {job.id: "gpu-a"}

    drained = asyncio.create_task(service.drain())
    await asyncio.sleep(0.2)
    assert not drained.done()  # the job runs on a worker: drain waits for it
    await pool.finish(job.id)
    await asyncio.wait_for(drained, 30)
    assert pool.idled == 1 and (await service.job(job.id)).state == JobState.FAILED  # type: ignore[union-attr]


async def test_preflight_asks_the_executor(make_pool_service: PoolFactory) -> None:
    """A job no worker could ever fit is refused before it is queued (the workers' announced budgets);
    memory_status and switch_model are the executor's too."""
    service, pool = await make_pool_service(workers=("gpu-a",))
    pool.budget = 1024  # bytes: nothing fits
    with pytest.raises(UserError) as refused:
        await service.submit(request(model="tiny"), "alice")
    assert refused.value.key == "job_too_large"
    assert await service.queue_length() == 0
    pool.budget = None
    assert (await service.submit(request(model="tiny"), "alice")).state == JobState.QUEUED
    assert service.memory_status(service.config.models["tiny"]).usable is None

    await service.switch_model("tiny", "admin")
    assert pool.switched == ["tiny"] and await service.active_model() == "tiny"
    with pytest.raises(AssertionError, match="not local"):
        service.worker  # noqa: B018


def test_redis_mode_loads_no_torch(tmp_path: Path) -> None:
    """The bot process of redis mode (service, Discord client, every cog) never imports torch or diffusers."""
    path = tmp_path / "config.toml"
    path.write_text(REDIS_CONFIG, encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from bot.config import load_config
        from bot.core.service import GenerationService
        from bot.discord_app.client import COGS, create_bot
        from tests.bot.conftest import request
        from tests.fakes.pool_executor import FakePool, worker

        async def main():
            config = load_config({str(path)!r})
            service = GenerationService(config, executor_factory=lambda s: FakePool(s, (worker("gpu-a"),)))
            await service.start()
            try:
                job = await service.submit(request(model="tiny"), "alice")
                service.memory_status(config.models["tiny"])
                bot = create_bot(config, service)
                for name in COGS:
                    await bot.load_extension(name)
                assert bot.get_cog("Queue") is not None
                await bot.close()
            finally:
                await service.close()
            heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
            print(json.dumps({{"job": job.id, "heavy": heavy}}))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"job": 1, "heavy": []}


async def test_redis_mode_without_a_factory_builds_the_pool_dispatcher(tmp_path: Path) -> None:
    """mode = "redis" builds bot.core.pool.dispatcher.PoolDispatcher from [workers] (no Redis answers here: the
    service starts all the same, and says jobs wait)."""
    from bot.core.pool.dispatcher import PoolDispatcher

    path = tmp_path / "config.toml"
    url = 'url = "redis://:s3cret@127.0.0.1:6399/0"\n'
    settings = url + 'prefix = "bot2"\nvisibility_timeout = 7.5\nmax_result_mb = 3\n'
    path.write_text(REDIS_CONFIG.replace(url, settings), encoding="utf-8")
    service = GenerationService(load_config(path))
    await service.start()
    try:
        executor = service.executor
        assert isinstance(executor, PoolDispatcher)
        assert executor.keys.prefix == "bot2" and executor.visibility_timeout == 7.5
        assert executor.max_result_bytes == 3 * 2**20 and executor.queue is service.queue
        assert service.waiting_for_worker()
    finally:
        await service.close()


async def test_metrics_count_the_workers_online(make_pool_service: PoolFactory, make_service: ServiceFactory) -> None:
    """animebot_workers_online: the pool's live workers (0 while Redis is down); 1 in local mode. The GPU gauge
    has no device in redis mode (the GPUs are in the workers' processes)."""
    from bot.metrics import MetricsEndpoint
    from tests.bot.test_metrics import scrape, value

    service, pool = await make_pool_service(workers=("gpu-a", "gpu-b"))
    endpoint = MetricsEndpoint(service, "127.0.0.1", 0)
    try:
        assert value(await asyncio.to_thread(scrape, endpoint.url), "animebot_workers_online") == 2
        pool.online = False
        assert value(await asyncio.to_thread(scrape, endpoint.url), "animebot_workers_online") == 0
        pool.online, pool.workers = True, ()
        assert value(await asyncio.to_thread(scrape, endpoint.url), "animebot_workers_online") == 0
    finally:
        await endpoint.close()

    local = await make_service(data="local-data")
    endpoint = MetricsEndpoint(local, "127.0.0.1", 0)
    try:
        assert value(await asyncio.to_thread(scrape, endpoint.url), "animebot_workers_online") == 1
    finally:
        await endpoint.close()
