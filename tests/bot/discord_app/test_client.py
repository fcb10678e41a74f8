"""The bot's entry points: construction without network, `animebot run`, command sync only on change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import simcord

from bot.cli import main
from bot.config import DiscordSettings, load_config
from bot.core.collector import CollectorPolicy
from bot.discord_app.client import AnimeBot, create_bot
from tests.cogs.conftest import BotFactory, make_bot, retire  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[3]


def test_create_bot_does_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network I/O at construction")

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", refuse)
    monkeypatch.setattr("socket.socket.connect", refuse)
    bot = create_bot(load_config(None))
    assert isinstance(bot, AnimeBot)
    assert bot.intents.guilds and bot.intents.guild_reactions
    assert not bot.intents.message_content and not bot.intents.members and not bot.intents.guild_messages


def test_run_without_token_explains_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main(["run"]) != 0
    err = capsys.readouterr().err
    assert "Reset Token" in err and "DISCORD_TOKEN" in err and "developers" in err


def test_run_token_from_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('data_dir = "data"\n[discord]\ntoken = "from-config"\n', encoding="utf-8")
    seen: list[str] = []
    monkeypatch.setattr(AnimeBot, "run", lambda self, token, **kw: seen.append(token))
    monkeypatch.setenv("DISCORD_TOKEN", "from-env")
    assert main(["run", "--config", str(config)]) == 0
    monkeypatch.delenv("DISCORD_TOKEN")
    assert main(["run", "--config", str(config)]) == 0
    assert seen == ["from-env", "from-config"]


def test_example_config_documents_the_discord_section() -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    assert "[discord]" in text
    for key in DiscordSettings.model_fields:
        assert re.search(rf"\b{key}\b", text), key
    assert load_config(REPO / "config.example.toml").discord.reroll_by_anyone is False


def _syncs(env: simcord.Env) -> list[str]:
    return [r.path for r in env.http_requests if r.method == "PUT" and r.path.endswith("/commands")]


async def test_commands_sync_only_when_the_tree_changed(make_bot: BotFactory) -> None:  # noqa: F811
    bot = await make_bot()
    async with simcord.run(bot) as env:
        assert bot.synced and len(_syncs(env)) == 1
        await retire(bot)
        same = await make_bot()
        await env.restart_bot(same)
        assert not same.synced and len(_syncs(env)) == 1  # unchanged: no registration
        await retire(same)
        changed = await make_bot()

        @changed.tree.command(name="extra", description="a new command")
        async def extra(interaction: Any) -> None: ...

        await env.restart_bot(changed)
        assert changed.synced and len(_syncs(env)) == 2


async def test_commands_sync_to_configured_guilds(make_bot: BotFactory) -> None:  # noqa: F811
    guild_id = 1456074443980800999
    bot = await make_bot(f"[discord]\nguild_ids = [{guild_id}]\n")
    env = simcord.Env(bot)
    env.create_guild(id=guild_id)
    await env.start()
    try:
        with env.time_context():
            assert bot.synced and _syncs(env) == [f"/applications/{bot.application_id}/guilds/{guild_id}/commands"]
            guild = env.guild
            alice = guild.add_member(env.create_user("alice"))
            assert "generate" in alice.available_commands(guild.create_text_channel("general"))
    finally:
        await env.shutdown()


async def test_run_freezes_after_setup_and_after_each_model_load(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    frozen: list[bool] = []
    loaded: list[str] = []
    monkeypatch.setattr(CollectorPolicy, "startup", lambda self: frozen.append(True))
    monkeypatch.setattr(CollectorPolicy, "model_loaded", lambda self, name: loaded.append(name))
    plain = await make_bot()
    async with simcord.run(plain, settle_timeout=60):
        assert plain.collector is None and plain.service.worker.on_model_loaded is None
    await retire(plain)

    bot = await make_bot()
    bot.freeze_gc = True  # as create_bot(config, freeze_gc=True) in `animebot run`
    async with simcord.run(bot, settle_timeout=60):
        assert frozen == [True]
        assert bot.collector is not None
        # The GPU worker tells the policy when a model load finished (tests/bot/core/test_collector.py).
        assert bot.service.worker.on_model_loaded == bot.collector.model_loaded
        assert bot.tagger_preload is not None
        await bot.tagger_preload  # and once the tagger's preload is over (it lives as long as a model)
        assert loaded == ["the tagger"]
