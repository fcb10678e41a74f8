"""Fixtures for driving the real bot through simcord: a started GenerationService on the tiny models
(64x64, 1–2 steps; built once per session) and a bot around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import simcord
from simcord._runtime import _selected_env

from bot.config import load_config
from bot.core.events import EventBus, JobEvent
from bot.core.service import GenerationService
from bot.discord_app.client import AnimeBot, create_bot
from inference.cache import ModelCache
from inference.registry import load_backend
from inference.specs import RuntimeOptions
from tests.bot.conftest import models_dir  # noqa: F401  (the session's tiny models)

BotFactory = Callable[..., Awaitable[AnimeBot]]

TAGS_CSV = "\n".join(
    ["name,category,count,aliases", "1girl,0,1000,", "smile,0,900,"]
    + [f"artist_{i:02d},1,{500 - i},artist_alias_{i:02d}" for i in range(40)]
    + [f"{'long_artist_' * 12}{i},1,{10 + i}," for i in range(2)]
)


# Tiny models at 64x64 (the built-ins' buckets scaled down) and 2 steps by default, no quotas.
BASE_CONFIG = """data_dir = "data"
[inference]
default_model = "tiny"
[quotas]
images_per_day = 0
max_queued_jobs = 0
[tags]
import_default = false
[models.tiny]
builtin = "tiny-sdxl"
size_scale = 0.0625
[models.tiny-anima64]
builtin = "tiny-anima"
size_scale = 0.0625
"""


def parked_follow(events: EventBus) -> Callable[[int], asyncio.Queue[JobEvent]]:
    """events.follow, whose queue's get() is declared to simcord as an external input when it waits.

    simcord settles a command (returns from `member.slash`) once every task the bot started is done or
    parked in a wait it recognizes (discord.py's wait_for, views, sleeps past the deadline). A delivery
    task waiting in service.watch for its job's next event is neither; declared so, it counts as parked
    until the event comes (and not while it then reads the database), and `await service.wait(job);
    await env.settle()` lets the delivery finish."""
    real = events.follow

    def follow(job_id: int) -> asyncio.Queue[JobEvent]:
        queue = real(job_id)
        get = queue.get

        async def parked_get() -> JobEvent:
            env: Any = _selected_env(driver=False)  # the simcord Env, inside a task the bot started
            if env is None or not queue.empty():
                return await get()
            event: JobEvent = await env.external_wait(get(), reason="a followed job's next event")
            return event

        queue.get = parked_get  # type: ignore[method-assign]
        return queue

    return follow


@pytest.fixture
async def make_bot(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> AsyncIterator[BotFactory]:
    """A bot and its service on `tmp_path/data`. The test's service is started outside the bot (the
    worker's idle wait must not count as the bot's unfinished work for simcord) and closed here; its
    events.follow is `parked_follow`."""
    services: list[GenerationService] = []
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)

    async def make(
        config_text: str = "", *, tags: bool = True, inference: str = "", safety: str = "rate_results = false\n"
    ) -> AnimeBot:
        """`config_text` is added after BASE_CONFIG; `inference` and `safety`, lines of its [inference] and
        [safety] tables (the rating of results is off unless a test turns it on: tests/cogs/test_rating.py)."""
        from bot.prompts.tags import import_csv

        path = tmp_path / "config.toml"
        base = BASE_CONFIG.replace("[inference]\n", "[inference]\n" + inference, 1) + "[safety]\n" + safety
        path.write_text(base + config_text, encoding="utf-8")
        config = load_config(path)
        if tags and not config.tags_db.exists():
            csv = tmp_path / "tags.csv"
            csv.write_text(TAGS_CSV, encoding="utf-8")
            import_csv(csv, config.tags_db)
        runtime = RuntimeOptions("cpu", None, models_dir, vram_limit=config.vram_limit)  # [inference] vram_limit_gb
        cache = ModelCache(runtime, capacity=2, location="cpu", loader=load_backend)
        service = GenerationService(config, cache)
        await service.start()
        services.append(service)
        monkeypatch.setattr(service.events, "follow", parked_follow(service.events))
        return create_bot(config, service)

    yield make
    for service in services:
        if service in closed:
            continue
        await service.close()


closed: set[GenerationService] = set()


async def retire(bot: AnimeBot) -> None:
    """Close a bot's test-owned service now (e.g. before a restart on the same data dir)."""
    await bot.service.close()
    closed.add(bot.service)


def server(
    env: simcord.Env, *names: str, guild: simcord.GuildHandle | None = None
) -> tuple[simcord.ChannelHandle, tuple[simcord.MemberActor, ...]]:
    """A #general text channel in `guild` (a new server by default) and one member per name, in order."""
    guild = guild or env.create_guild()
    channel = guild.create_text_channel("general")
    return channel, tuple(guild.add_member(env.create_user(name)) for name in names)
