"""[discord] shards: the bot is discord.py's AutoShardedBot when asked ("auto" or N > 0), the plain Bot by
default; a sharded bot logs in over the loopback fake Discord with one gateway session per shard."""

from __future__ import annotations

from pathlib import Path

import pytest
from discord.ext import commands

from bot.config import load_config
from bot.discord_app.client import AnimeBot, ShardedAnimeBot, create_bot
from tests.cogs.conftest import BotFactory
from tests.cogs.test_wire import fake_discord, online  # noqa: F401  (a fixture)
from tests.fakes.discord_server import FakeDiscord


def configured(tmp_path: Path, discord_table: str) -> AnimeBot:
    path = tmp_path / "config.toml"
    path.write_text(f"[discord]\n{discord_table}", encoding="utf-8")
    return create_bot(load_config(path))


@pytest.mark.parametrize(
    ("table", "count"), [("shards = \"auto\"\n", None), ("shards = 4\n", 4), ("shards = 1\n", 1)]
)
def test_shards_make_an_auto_sharded_bot(tmp_path: Path, table: str, count: int | None) -> None:
    bot = configured(tmp_path, table)  # constructed only: no network, nothing to close (discord.py's
    # AutoShardedClient cannot even close before its login)
    assert isinstance(bot, commands.AutoShardedBot) and isinstance(bot, ShardedAnimeBot)
    assert bot.shard_count == count and bot.shard_ids is None
    assert bot.config.discord.shards == ("auto" if count is None else count)


@pytest.mark.parametrize("table", ["", "shards = 0\n"])
def test_one_connection_by_default(tmp_path: Path, table: str) -> None:
    bot = configured(tmp_path, table)
    assert type(bot) is AnimeBot and not isinstance(bot, commands.AutoShardedBot)
    assert bot.shard_count is None


async def test_a_sharded_bot_logs_in_with_one_session_per_shard(
    make_bot: BotFactory, fake_discord: FakeDiscord  # noqa: F811
) -> None:
    fake = fake_discord
    bot = await make_bot("[discord]\nshards = 2\n")
    assert isinstance(bot, commands.AutoShardedBot)
    async with online(bot, fake):
        shards = sorted(tuple(s.identify["shard"]) for s in fake.sessions if s.identify is not None)
        assert shards == [(0, 2), (1, 2)]
        assert bot.shard_count == 2 and set(bot.shards) == {0, 1}
        assert bot.get_guild(fake.guild_id) is not None


async def test_auto_asks_discord_for_the_shard_count(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:  # noqa: F811
    fake = fake_discord
    bot = await make_bot('[discord]\nshards = "auto"\n')
    async with online(bot, fake):
        assert fake.find("GET", "/gateway/bot")
        (session,) = [s for s in fake.sessions if s.identify is not None]
        assert session.identify is not None and session.identify["shard"] == [0, 1]  # the fake recommends 1
        assert bot.shard_count == 1
