"""The Discord side of `[workers] mode = "redis"` through the real command tree (simcord), with a stand-in for
the pool dispatcher (tests/fakes/pool_executor.py): /queue shows which worker runs each job and says when no
worker is online or Redis does not answer; /model info lists the workers holding and serving a model; /model
switch goes through the executor; /generate says the job waits for a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import discord
import pytest
import simcord

from bot.config import load_config
from bot.core.jobs import JobState
from bot.core.service import GenerationService
from bot.discord_app.client import AnimeBot, create_bot
from inference.cache import ModelCache
from inference.registry import load_backend
from inference.specs import RuntimeOptions
from tests.bot.conftest import models_dir  # noqa: F401  (the session's tiny models)
from tests.cogs.conftest import BASE_CONFIG, BotFactory, parked_follow, server
from tests.cogs.test_account import queue_jobs
from tests.cogs.test_generate import finish, jobs_of
from tests.cogs.test_i18n import japanese_users  # noqa: F401  (a fixture)
from tests.cogs.test_results import generated
from tests.fakes.pool_executor import FakePool, InProcessPool, worker

PoolBotFactory = Callable[..., Awaitable[tuple[AnimeBot, FakePool]]]
POOL = '[workers]\nmode = "redis"\nurl = "redis://127.0.0.1:6399/0"\n'


@pytest.fixture
async def make_pool_bot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PoolBotFactory]:
    services: list[GenerationService] = []

    async def make(online: bool = True, *workers: str, loaded: tuple[str, ...] = ()) -> tuple[AnimeBot, FakePool]:
        path = tmp_path / "config.toml"
        path.write_text(BASE_CONFIG + "[safety]\nrate_results = false\n" + POOL, encoding="utf-8")
        config = load_config(path)
        pools: list[FakePool] = []

        def factory(service: GenerationService) -> FakePool:
            statuses = tuple(
                worker(w, models=("tiny", "tiny-anima64"), loaded=loaded if i == 0 else (), device=f"cuda:{i}")
                for i, w in enumerate(workers)
            )
            pools.append(FakePool(service, statuses, online))
            return pools[0]

        service = GenerationService(config, executor_factory=factory)
        await service.start()
        services.append(service)
        monkeypatch.setattr(service.events, "follow", parked_follow(service.events))
        return create_bot(config, service), pools[0]

    yield make
    for service in services:
        await service.close()


async def test_queue_shows_the_worker_of_each_running_job(
    make_pool_bot: PoolBotFactory, japanese_users: set[int]  # noqa: F811
) -> None:
    bot, pool = await make_pool_bot(True, "gpu-box:cuda:0", "gpu-box:cuda:1")
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, yuki) = server(env, "alice", "yuki")
        japanese_users.add(yuki.id)
        first, second, third = await queue_jobs(bot, alice.id, 3)
        await bot.service.set_paused(False)
        assert await pool.take("gpu-box:cuda:0") == first.id
        assert await pool.take("gpu-box:cuda:1") == second.id

        shown = await alice.slash(channel, "queue")
        assert shown.ephemeral and shown.response is not None
        text = shown.response.content
        assert f"Running: #{first.id} (starting). (on worker `gpu-box:cuda:0`)" in text
        assert f"Running: #{second.id} (starting). (on worker `gpu-box:cuda:1`)" in text
        assert f"#{third.id} at position 1" in text
        assert "No worker is online" not in text and "Redis" not in text

        ja = await yuki.slash(channel, "queue")
        assert ja.response is not None and "ワーカー `gpu-box:cuda:1`" in ja.response.content

        del pool.running[second.id]  # the dispatcher no longer knows its worker (e.g. its heartbeat expired)
        shown = await alice.slash(channel, "queue")
        assert shown.response is not None
        assert f"Running: #{second.id} (starting). (its worker is not online right now)" in shown.response.content


async def test_queue_says_no_worker_online(make_pool_bot: PoolBotFactory) -> None:
    bot, _ = await make_pool_bot(True)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        shown = await alice.slash(channel, "queue")
        assert shown.response is not None
        assert "No worker is online: jobs wait until one connects." in shown.response.content
        assert "Nothing is running." in shown.response.content


async def test_queue_says_redis_is_unreachable(make_pool_bot: PoolBotFactory) -> None:
    bot, pool = await make_pool_bot(False, "gpu-a")
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        shown = await alice.slash(channel, "queue")
        assert shown.response is not None and "Redis server does not answer" in shown.response.content
        pool.online = True
        again = await alice.slash(channel, "queue")
        assert again.response is not None and "Redis" not in again.response.content


async def test_generate_says_the_job_waits_for_a_worker(
    make_pool_bot: PoolBotFactory, japanese_users: set[int]  # noqa: F811
) -> None:
    """Redis down: the request is still accepted and stored, and the user is told it waits for a worker."""
    bot, pool = await make_pool_bot(False, "gpu-a")
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, yuki) = server(env, "alice", "yuki")
        japanese_users.add(yuki.id)
        asked = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert asked.response is not None
        text = asked.response.content
        assert "queued (position 1)" in text and "No worker is online right now" in text
        (job,) = (await bot.service.history(f"discord:{alice.id}", 0, 10))[0]
        assert job.state == JobState.QUEUED

        pool.online = True  # Redis is back and a worker is online: no such line
        asked = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert asked.response is not None and "No worker" not in asked.response.content
        ja = await yuki.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert ja.response is not None and "ワーカー" not in ja.response.content
        pool.online = False
        ja = await yuki.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert ja.response is not None and "オンラインのワーカーがありません" in ja.response.content


async def test_model_info_lists_the_workers_holding_and_serving_it(make_pool_bot: PoolBotFactory) -> None:
    bot, pool = await make_pool_bot(True, "gpu-a", "gpu-b", loaded=("tiny",))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        info = await alice.slash(channel, "model info", name="tiny")
        assert info.response is not None
        assert "Workers: `gpu-a` (cuda:0) hold it; `gpu-b` (cuda:1) can load it." in info.response.content
        other = await alice.slash(channel, "model info", name="tiny-anima64")
        assert other.response is not None
        assert "Workers: none hold it; `gpu-a` (cuda:0), `gpu-b` (cuda:1) can load it." in other.response.content
        pool.online = False
        down = await alice.slash(channel, "model info", name="tiny")
        assert down.response is not None and "Workers: none online." in down.response.content


async def test_model_switch_goes_through_the_executor(make_pool_bot: PoolBotFactory) -> None:
    bot, pool = await make_pool_bot(True, "gpu-a", loaded=("tiny-anima64",))
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
        mod = guild.add_member(env.create_user("mod"), roles=[mods])
        switched = await mod.slash(channel, "model switch", name="tiny-anima64")
        assert switched.response is not None
        assert "tiny-anima64 is now active" in switched.response.content
        assert pool.switched == ["tiny-anima64"]
        first = [r.json for r in env.http_requests if r.method == "POST" and "/callback" in r.path]
        assert any("Switching to tiny-anima64…" in str(body) for body in first), first
        assert not any("after the job running now" in str(body) for body in first)
        assert await bot.service.active_model(str(guild.id)) == "tiny-anima64"


async def test_local_mode_queue_is_unchanged(make_bot: BotFactory) -> None:
    """Local mode's /queue is as before: no worker names, no pool lines (the one worker is this process)."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await queue_jobs(bot, alice.id, 1)
        shown = await alice.slash(channel, "queue")
        assert shown.response is not None
        assert "worker" not in shown.response.content.lower() and "Redis" not in shown.response.content


async def test_a_reroll_says_it_waits_for_a_worker(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A result made by a worker of the pool; rerolled while no worker is online, the new job is queued and the
    notice says it waits for a worker."""
    path = tmp_path / "config.toml"
    path.write_text(BASE_CONFIG + "[safety]\nrate_results = false\n" + POOL, encoding="utf-8")
    config = load_config(path)
    cache = ModelCache(RuntimeOptions("cpu", None, models_dir), capacity=2, location="cpu", loader=load_backend)
    pools: list[InProcessPool] = []

    def factory(service: GenerationService) -> InProcessPool:
        pools.append(InProcessPool(service, cache))
        return pools[-1]

    service = GenerationService(config, executor_factory=factory)
    await service.start()
    try:
        monkeypatch.setattr(service.events, "follow", parked_follow(service.events))
        bot = create_bot(config, service)
        async with simcord.run(bot, settle_timeout=60) as env:
            channel, (alice,) = server(env, "alice")
            job, message = await generated(env, bot, alice, channel)
            assert job.state == JobState.DONE
            pools[0].offline = True
            clicked = await alice.click(message, custom_id=f"animebot:reroll:{job.id}")
            assert not clicked.ephemeral
            callbacks = [str(r.json) for r in env.http_requests if r.method == "POST" and "/callback" in r.path]
            assert f"Rerolling job #{job.id}" in callbacks[-1] and "No worker is online right now" in callbacks[-1]
            new = (await jobs_of(bot, alice.id))[0]
            assert new.reroll_of == job.id
            pools[0].offline = False
            await finish(env, bot, new.id)
    finally:
        await service.close()
