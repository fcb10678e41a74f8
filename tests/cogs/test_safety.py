"""/safety (each server's own rating check, within what [safety] allows) and /withheld (seeing withheld results)
through the real command tree, with two servers (tests/cogs/test_admin_scope.py), the tiny models and the tiny
tagger (tests/cogs/test_rating.py: red images are rated explicit, or sensitive with `sensitive_tagger`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import simcord

from bot.discord_app.client import AnimeBot
from tests.cogs.conftest import BotFactory
from tests.cogs.test_admin_scope import Servers, refused, two_servers
from tests.cogs.test_queue_cog import audit_actions
from tests.cogs.test_rating import RED, generate, make, painted, posted_images, sensitive_tagger, tiny_tagger

__all__ = ["sensitive_tagger", "tiny_tagger"]  # fixtures


async def choices(bot: AnimeBot) -> list[tuple[str, str | None, int | None]]:
    rows = await bot.service.store.fetchall("SELECT guild_id, sensitive, rate_results FROM guild_safety")
    return [(row["guild_id"], row["sensitive"], row["rate_results"]) for row in rows]


def answer(result: simcord.InteractionResult) -> str:
    assert result.ephemeral and result.response is not None
    return result.response.content


async def test_a_server_admin_makes_sensitive_results_withheld_in_their_server_only(
    make_bot: BotFactory, sensitive_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)  # rated sensitive; the config spoilers sensitive results
    bot = await make(make_bot, sensitive_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        shown = answer(await s.alice.slash(s.channel_a, "safety show"))
        assert "rated before they are posted" in shown and "sensitive are spoilered" in shown

        # Members, and the admins of another server, change nothing.
        assert "Only admins" in await refused(s.alice, s.channel_a, "safety set", sensitive="withhold")
        assert await choices(bot) == [] and await audit_actions(bot) == []

        done = answer(await s.mod_a.slash(s.channel_a, "safety set", sensitive="withhold"))
        assert "sensitive are withheld" in done and f"<@{s.mod_a.id}>" in done
        assert await choices(bot) == [(str(s.a.id), "withhold", None)]
        entries = await bot.service.store.fetchall("SELECT actor_id, guild_id, action, detail FROM audit_log")
        assert [(e["actor_id"], e["guild_id"], e["action"]) for e in entries] == [
            (f"discord:{s.mod_a.id}", str(s.a.id), "safety.set")
        ]
        assert json.loads(entries[0]["detail"])["before"] == {"sensitive": "spoiler", "rate_results": True}
        # Server B's admin resets B (which had no choice: nothing to audit); A keeps its choice.
        assert "sensitive are spoilered" in answer(await s.mod_b.slash(s.channel_b, "safety reset"))
        assert await choices(bot) == [(str(s.a.id), "withhold", None)] and await audit_actions(bot) == ["safety.set"]
        await s.mod_a.slash(s.channel_a, "safety set", rating=True)  # one field: the other is kept
        assert await choices(bot) == [(str(s.a.id), "withhold", 1)]

        in_a, _ = await generate(env, bot, s.alice, s.channel_a)
        assert in_a.withheld == "sensitive" and posted_images(env, s.channel_a.id) == []
        in_b, result_b = await generate(env, bot, s.bob, s.channel_b)
        assert in_b.withheld is None and result_b.response is not None
        assert [a.filename.startswith("SPOILER_") for a in result_b.response.attachments] == [True, True]

        reset = answer(await s.mod_a.slash(s.channel_a, "safety reset"))
        assert "sensitive are spoilered" in reset and await choices(bot) == []
        assert await audit_actions(bot) == ["safety.set", "safety.set", "safety.clear"]
        again, _ = await generate(env, bot, s.alice, s.channel_a)
        assert again.withheld is None


async def test_a_server_may_be_stricter_but_not_looser_than_the_config(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)  # rated explicit
    bot = await make(make_bot, tiny_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        for options in ({"rating": False}, {"sensitive": "post"}, {"rating": False, "sensitive": "withhold"}):
            text = await refused(s.mod_a, s.channel_a, "safety set", **options)
            assert "does not let a server make the image check looser" in text, options
        # Not even a bot admin: the config is the bot owner's word.
        assert "looser" in await refused(s.owner, s.channel_b, "safety set", rating=False)
        assert "Give sensitive or rating" in await refused(s.mod_a, s.channel_a, "safety set")
        assert await choices(bot) == [] and await audit_actions(bot) == []
        job, _ = await generate(env, bot, s.alice, s.channel_a)
        assert job.withheld == "explicit"

        dm = await s.alice.user.slash("safety show")
        assert dm.ephemeral and dm.response is not None and "in a server only" in dm.response.content


async def test_the_config_may_let_servers_turn_the_check_off(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger, "servers_may_loosen = true\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        off = answer(await s.mod_a.slash(s.channel_a, "safety set", rating=False))
        assert "results are not rated: everything is posted" in off
        posted, result = await generate(env, bot, s.alice, s.channel_a)
        assert posted.withheld is None and result.response is not None and len(result.response.attachments) == 2
        assert [i.rating for i in await bot.service.images(posted.id)] == [None, None]  # not rated at all
        kept, _ = await generate(env, bot, s.bob, s.channel_b)  # server B follows the config
        assert kept.withheld == "explicit"


async def test_a_server_may_turn_the_check_on_where_the_config_has_it_off(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make_bot(f"[tagger]\nmodel = '{tiny_tagger}'\n", safety="rate_results = false\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        on = answer(await s.mod_a.slash(s.channel_a, "safety set", rating=True))
        assert "rated before they are posted" in on and "The bot's configuration: rating off" in on
        job, _ = await generate(env, bot, s.alice, s.channel_a)
        assert job.withheld == "explicit"
        elsewhere, _ = await generate(env, bot, s.bob, s.channel_b)
        assert elsewhere.withheld is None


async def withheld_job(env: simcord.Env, bot: AnimeBot, s: Servers) -> int:
    job, _ = await generate(env, bot, s.alice, s.channel_a)
    assert job.withheld == "explicit"
    return job.id


async def test_owners_and_the_servers_admins_see_withheld_results_privately(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        assert "No withheld results" in answer(await s.alice.slash(s.channel_a, "withheld list"))
        job_id = await withheld_job(env, bot, s)

        own = answer(await s.alice.slash(s.channel_a, "withheld list"))
        assert f"`#{job_id}` explicit" in own
        assert "No withheld results" in answer(await s.bob.slash(s.channel_b, "withheld list"))
        assert "Only admins" in await refused(s.alice, s.channel_a, "withheld list", server=True)
        listed = answer(await s.mod_a.slash(s.channel_a, "withheld list", server=True))
        assert f"`#{job_id}` explicit · <@{s.alice.id}>" in listed
        assert "No withheld results" in answer(await s.mod_b.slash(s.channel_b, "withheld list", server=True))

        for who, channel in ((s.alice, s.channel_a), (s.mod_a, s.channel_a), (s.owner, s.channel_b)):
            shown = await who.slash(channel, "withheld show", job=job_id)
            assert shown.ephemeral and shown.response is not None and len(shown.response.attachments) == 2, who.name
        for who, channel in ((s.bob, s.channel_b), (s.mod_b, s.channel_b)):  # not hers, not their server
            text = answer(await who.slash(channel, "withheld show", job=job_id))
            assert "no withheld result" in text
        missing = answer(await s.alice.slash(s.channel_a, "withheld show", job=job_id + 100))
        assert missing == f"There is no withheld result #{job_id + 100} that you may see."  # as for bob above
        assert posted_images(env, s.channel_a.id) == posted_images(env, s.channel_b.id) == []
