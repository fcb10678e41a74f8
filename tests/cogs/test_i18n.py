"""Japanese through the real command tree (simcord): localized command names and descriptions in the
synced payload, and Japanese replies for a member whose Discord locale is Japanese."""

from __future__ import annotations

import ast
import unicodedata
from pathlib import Path
from typing import Any

import discord
import pytest
import simcord
import simcord.interactions

from bot.discord_app.translator import CommandTranslator, load_table
from tests.cogs.conftest import BotFactory, retire, server
from tests.cogs.test_generate import finish, jobs_of
from tests.cogs.test_results import generated

JA = discord.Locale.japanese.value


def options_of(command: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {option["name"]: option for option in command.get("options", [])}


@pytest.fixture
def japanese_users(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Users whose interactions carry the "ja" locale (simcord sends "en-US" for everyone)."""
    users: set[int] = set()
    original = simcord.interactions.base_payload

    def base_payload(backend: Any, **kwargs: Any) -> Any:
        record, payload = original(backend, **kwargs)
        if kwargs["user_id"] in users:
            payload["locale"] = JA
        return record, payload

    monkeypatch.setattr(simcord.interactions, "base_payload", base_payload)
    return users


async def test_synced_commands_carry_japanese_descriptions(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        assert isinstance(bot.tree.translator, CommandTranslator)
        registered = {c["name"]: c for c in env.backend.commands[None].values()}
        generate = registered["generate"]
        assert generate["description_localizations"][JA] == "プロンプトからアニメ画像を生成します"
        assert generate["name_localizations"][JA] == "生成"
        options = options_of(generate)
        assert set(options) >= {"prompt", "negative", "steps", "cfg", "count"}
        for name, option in options.items():
            assert option["description_localizations"][JA], name
            if name != "cfg":  # "cfg" is the same word in Japanese UIs
                assert option["name_localizations"][JA], name
        assert options["steps"]["description_localizations"][JA] == "サンプリングのステップ数"
        assert options["prompt"]["name_localizations"][JA] == "プロンプト"

        model = registered["model"]
        assert model["description_localizations"][JA] == "画像生成モデル"
        assert options_of(model)["switch"]["description_localizations"][JA].startswith("管理者")
        action = options_of(registered["queue"])["action"]
        choices = {c["value"]: c["name_localizations"][JA] for c in action["choices"]}
        assert choices["pause"] == "一時停止" and choices["cancel"] == "キャンセル"
        for command in registered.values():
            assert command["description_localizations"][JA]

    # The same payload is what the sync hash covers.
    payload = {c["name"]: c for c in await bot.tree_payload()}
    assert payload["generate"]["description_localizations"][JA] == "プロンプトからアニメ画像を生成します"


def _valid_name(name: str) -> bool:
    """Discord's rule for command and option names: 1-32 letters, digits, "-", "_" or "'", lowercase."""
    allowed = all(unicodedata.category(c)[0] in "LN" or c in "-_'" for c in name)
    return 1 <= len(name) <= 32 and allowed and name == name.lower()


async def test_japanese_names_are_valid_for_discord_and_unambiguous(make_bot: BotFactory) -> None:
    bot = await make_bot()
    await bot.tree.set_translator(CommandTranslator())
    for cog in ("cogs.generate", "cogs.account", "cogs.queue", "cogs.models"):
        await bot.load_extension(cog)
    commands = await bot.tree_payload()
    bot.tree.clear_commands(guild=None)

    def check(siblings: list[dict[str, Any]]) -> None:
        names = [(item.get("name_localizations") or {}).get(JA, item["name"]) for item in siblings]
        assert len(set(names)) == len(names), names
        assert all(_valid_name(name) for name in names), names
        for item in siblings:
            check(item.get("options", []))  # subcommands, then their options

    check(commands)
    assert {c["name"] for c in commands} >= {"generate", "quota", "history", "queue", "model"}


def test_every_command_text_has_a_japanese_translation() -> None:
    descriptions = load_table("ja")["descriptions"]
    texts: list[str] = []
    for path in sorted(Path("cogs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
                call_is_text = node.arg in ("description", "group_description")
                if call_is_text and isinstance(node.value.value, str):
                    texts.append(node.value.value)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "describe":
                texts += [str(k.value.value) for k in node.keywords if isinstance(k.value, ast.Constant)]
    assert texts
    assert [t for t in texts if t not in descriptions] == []


async def test_japanese_member_gets_japanese_messages(make_bot: BotFactory, japanese_users: set[int]) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (hanako, alice) = server(env, "hanako", "alice")
        japanese_users.add(hanako.id)
        await bot.service.set_quota("user", f"discord:{hanako.id}", "test", images_per_day=10)

        refused = await hanako.slash(channel, "generate", prompt="1girl", steps=500)
        assert refused.ephemeral and refused.response is not None
        assert refused.response.content == "stepsは1〜150の範囲で指定してください（指定値: 500）。"
        assert await bot.service.job(1) is None  # nothing was queued

        quota = await hanako.slash(channel, "quota")
        assert quota.ephemeral and quota.response is not None
        assert "過去24時間の画像: 0 / 10（残り: 10）" in quota.response.content
        assert "待機中・実行中のジョブ: 0件" in quota.response.content

        english = await alice.slash(channel, "quota")
        assert english.response is not None and "Images in the last 24 hours" in english.response.content


async def test_reaction_reroll_answers_in_the_owners_language_else_the_servers(make_bot: BotFactory) -> None:
    bot = await make_bot("[discord]\nreroll_by_anyone = true\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild(preferred_locale=JA)  # a reaction carries no user locale
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))  # asked in English (simcord's en-US)
        bob = guild.add_member(env.create_user("bob"))
        job, message = await generated(env, bot, alice, channel)

        def posted(text: str) -> bool:
            posts = [str(r.json) for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")]
            return any(text in post for post in posts)

        await alice.react(message.message, "🔄")  # the owner: the language of her request
        mine = (await jobs_of(bot, alice.id))[0]
        assert mine.reroll_of == job.id and mine.locale == "en"
        await finish(env, bot, mine.id)
        assert posted(f"<@{alice.id}> Rerolling job #{job.id} as #{mine.id}")

        await bob.react(message.message, "🔄")  # someone else: the server's language
        theirs = (await jobs_of(bot, bob.id))[0]
        assert theirs.reroll_of == job.id and theirs.locale == "ja"
        await finish(env, bot, theirs.id)
        assert posted(f"<@{bob.id}> ジョブ #{job.id} を #{theirs.id} として再生成します")


async def test_result_delivered_after_a_restart_speaks_the_users_language(
    make_bot: BotFactory, japanese_users: set[int]
) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (hanako, alice) = server(env, "hanako", "alice")
        japanese_users.add(hanako.id)
        await bot.service.set_paused(True)  # asked before the restart, run after it
        for member in (hanako, alice):
            await member.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        japanese, english = (await jobs_of(bot, hanako.id))[0], (await jobs_of(bot, alice.id))[0]
        assert (japanese.locale, english.locale) == ("ja", "en")

        await retire(bot)
        again = await make_bot()  # a new service and bot on the same data dir: the old tokens are gone
        await env.restart_bot(again)
        await again.service.set_paused(False)  # a pause survives restarts
        for job in (japanese, english):
            await finish(env, again, job.id)
        posts = [r.json for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")]
        texts = [str(post) for post in posts]
        assert any(f"<@{hanako.id}> 画像ができました。#{japanese.id} tiny · シード" in t for t in texts)
        assert any(f"<@{alice.id}> your images are ready. #{english.id} tiny · seed" in t for t in texts)
