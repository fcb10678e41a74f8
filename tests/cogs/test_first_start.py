"""Issue 10's first start through the real command tree (simcord): the model's default quality tags and what
the reply says of them, the character option and its autocomplete, explicit tags refused in normal channels."""

from __future__ import annotations

from pathlib import Path

import discord
import pytest
import simcord

from bot.discord_app.client import AnimeBot
from bot.prompts.tags import import_csv
from tests.cogs.conftest import BotFactory, server

TAGS = """1girl,0,1000,
smile,0,900,
nude,0,800,"naked,birthday_suit"
nipples,0,700,nipple
facial_mark,0,600,
hatsune_miku,4,500,"miku,/hm"
hakurei_reimu,4,400,reimu
hatsune_mikuo,4,10,
"""


async def make(make_bot: BotFactory, tmp_path: Path, config: str = "") -> AnimeBot:
    """A bot whose tag database is TAGS (written where make_bot looks, so it keeps it)."""
    src = tmp_path / "first-start-tags.csv"
    src.write_text(TAGS, encoding="utf-8")
    import_csv(src, tmp_path / "data" / "tags.sqlite")
    return await make_bot(config)


async def job_prompt(bot: AnimeBot, user_id: int) -> str:
    jobs, _ = await bot.service.history(f"discord:{user_id}", 0, 50)
    return jobs[0].params.prompt


async def test_no_quality_adds_the_models_default_and_the_reply_says_so(
    make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "generate", prompt="1girl, smile", steps=1)
        assert result.response is not None and not result.ephemeral
        reply = result.response.content
        assert "Quality tags added" in reply and "masterpiece, high score, great score, absurdres" in reply
        assert await job_prompt(bot, alice.id) == "1girl, smile, masterpiece, high score, great score, absurdres"


async def test_quality_none_adds_nothing_and_a_picked_quality_replaces_the_default(
    make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)
        channel, (alice, bob) = server(env, "alice", "bob")
        offered = {c["value"] for c in await alice.autocomplete(channel, "generate", "quality", "no")}
        assert "none" in offered
        result = await alice.slash(channel, "generate", prompt="1girl, smile", quality="none", steps=1)
        assert result.response is not None and "Quality tags added" not in result.response.content
        assert await job_prompt(bot, alice.id) == "1girl, smile"
        result = await bob.slash(channel, "generate", prompt="1girl, smile", quality="low", steps=1)
        assert result.response is not None and "Quality tags added" not in result.response.content
        assert await job_prompt(bot, bob.id) == "1girl, smile, low quality, bad score"


async def test_the_default_follows_the_active_models_dialect(make_bot: BotFactory, tmp_path: Path) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        await bot.service.switch_model("tiny-anima64", "test", str(guild.id))
        result = await alice.slash(channel, "generate", prompt="smile, 1girl", steps=1)
        assert result.response is not None and "masterpiece, best quality, score_7" in result.response.content
        assert await job_prompt(bot, alice.id) == "masterpiece, best quality, score_7, 1girl, smile"


async def test_character_autocomplete_shows_aliases_and_fills_the_character_slot(
    make_bot: BotFactory, tmp_path: Path
) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)
        channel, (alice, bob) = server(env, "alice", "bob")
        hits = await alice.autocomplete(channel, "generate", "character", "hatsune")
        assert [c["value"] for c in hits] == ["hatsune_miku", "hatsune_mikuo"]
        assert hits[0]["name"] == "hatsune miku (miku, /hm)"
        by_alias = await alice.autocomplete(channel, "generate", "character", "Reimu")
        assert by_alias == [{"name": "hakurei reimu ← reimu", "value": "hakurei_reimu"}]
        several = await alice.autocomplete(channel, "generate", "character", "hatsune_miku, haku")
        assert several[0]["value"] == "hatsune_miku, hakurei_reimu"
        assert all(1 <= len(c["name"]) <= 100 and 1 <= len(c["value"]) <= 100 for c in hits + several)

        await alice.slash(channel, "generate", prompt="smile, 1girl", character="hatsune_miku", quality="none", steps=1)
        assert await job_prompt(bot, alice.id) == "1girl, hatsune miku, smile"  # SDXL: count, character, ...
        # Typed by hand, as an alias, full-width and with a zero-width space: normalized, then resolved.
        await bob.slash(
            channel, "generate", prompt="smile, 1girl", character="ｍｉ\u200bku", quality="none", steps=1
        )
        assert await job_prompt(bot, bob.id) == "1girl, hatsune miku, smile"
        jobs, _ = await bot.service.history(f"discord:{bob.id}", 0, 5)
        assert jobs[0].request.choices.character == "miku"  # stored normalized (rerolls keep it)


async def test_a_too_long_character_is_refused(make_bot: BotFactory, tmp_path: Path) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "generate", prompt="1girl", character="x" * 101, steps=1)
        assert result.ephemeral and result.response is not None
        assert "Character names must be 1 to 100 characters" in result.response.content
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0


# Explicit tags in any spelling: refused in a normal channel with the explicit rating's message.
EXPLICIT = [
    {"prompt": "1girl, nude"},
    {"prompt": "1girl, Nude"},
    {"prompt": "1girl, NUDE, smile"},
    {"prompt": "1girl, ｎｕｄｅ"},
    {"prompt": "1girl, nu\u200bde"},
    {"prompt": "1girl, nu\u00adde"},
    {"prompt": "1girl, n u d e"},
    {"prompt": "1girl, n.u.d.e"},
    {"prompt": "1girl, nu-de"},
    {"prompt": "1girl, nudé"},
    {"prompt": "1girl, nud\u0435"},  # Cyrillic е
    {"prompt": "1girl, completely_nude"},
    {"prompt": "1girl, (nude:1.3)"},
    {"prompt": "1girl, [nipples]"},
    {"prompt": "a girl standing nude on a beach at sunset."},
    {"prompt": "1girl, NIPPLES"},
    {"prompt": "1girl, nipple"},
    {"prompt": "1girl, pussy"},
    {"prompt": "1girl, 1boy, sex"},
    {"prompt": "1girl, S E X"},
    {"prompt": "1girl, penis"},
    {"prompt": "1girl, cum"},
    {"prompt": "1girl, fellatio"},
    {"prompt": "1girl, oral"},
    {"prompt": "1girl, hentai"},
    {"prompt": "1girl, birthday_suit"},  # an alias of nude in the tag database
    {"prompt": "1girl, (birthday suit:1.2)"},  # weighted: the alias is looked up too
    {"prompt": "1girl", "artist": "nude"},
    {"prompt": "1girl", "character": "nipples"},
    {"prompt": "1girl", "negative": "lowres, (nude:-1)"},  # a negative weight in the negative asks for it
]


async def test_explicit_tags_are_refused_in_a_normal_channel(make_bot: BotFactory, tmp_path: Path) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)  # a leak would stay queued, and is counted below
        channel, (alice,) = server(env, "alice")
        leaked = []
        for options in EXPLICIT:
            result = await alice.slash(channel, "generate", steps=1, **options)
            content = result.response.content if result.response is not None else ""
            if not (result.ephemeral and "'explicit'" in content and "age-restricted" in content):
                leaked.append(options)
        assert leaked == []
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0


INNOCENT = ["1girl, facial mark", "1girl, sexy", "1girl, Essex", "1girl, smile, denuded tree", "1girl, nude color"]


async def test_innocent_neighbours_and_age_restricted_channels_are_accepted(
    make_bot: BotFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make(make_bot, tmp_path)
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)
        guild = env.create_guild()
        general = guild.create_text_channel("general")
        adult = guild.create_text_channel("adult")
        monkeypatch.setattr(discord.TextChannel, "is_nsfw", lambda self: self.id == adult.id)
        alice = guild.add_member(env.create_user("alice"))
        for prompt in INNOCENT[:4]:
            result = await alice.slash(general, "generate", prompt=prompt, steps=1)
            assert not result.ephemeral, prompt
        # `nude color` holds the word nude: refused in a normal channel (documented: words match anywhere).
        assert (await alice.slash(general, "generate", prompt=INNOCENT[4], steps=1)).ephemeral
        queued = await bot.service.store.scalar("SELECT COUNT(*) FROM jobs")
        for options in EXPLICIT:
            result = await alice.slash(adult, "generate", steps=1, **options)
            assert not result.ephemeral, options
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == queued + len(EXPLICIT)
        jobs, _ = await bot.service.history(f"discord:{alice.id}", 0, 1)
        assert jobs[0].verdict is not None and jobs[0].verdict.nsfw  # spoilered where the server asks
