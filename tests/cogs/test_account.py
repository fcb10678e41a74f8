"""/quota and /history through the real command tree (simcord)."""

from __future__ import annotations

import pytest
import simcord

from bot.core.jobs import JobRecord
from bot.discord_app.client import AnimeBot
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from tests.cogs.conftest import BotFactory, retire, server
from tests.cogs.test_generate import jobs_of, nsfw_channels


async def queue_jobs(bot: AnimeBot, user_id: int, count: int) -> list[JobRecord]:
    """Jobs waiting in a paused queue (nothing runs)."""
    await bot.service.set_paused(True)
    request = GenerationRequest("tiny", PromptChoices(f"1girl, prompt of user {user_id}"), steps=1, aspect="1:1")
    return [await bot.service.submit(request, f"discord:{user_id}") for _ in range(count)]


async def test_quota_shows_remaining_reset_and_queued(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_quota("user", f"discord:{alice.id}", "test", images_per_day=10)

        empty = await alice.slash(channel, "quota")
        assert empty.ephemeral and empty.response is not None
        assert "0 of 10 (10 left)" in empty.response.content and "<t:" not in empty.response.content

        await queue_jobs(bot, alice.id, 2)
        result = await alice.slash(channel, "quota")
        assert result.ephemeral and result.response is not None
        text = result.response.content
        assert "2 of 10 (8 left)" in text and "<t:" in text and ":R>" in text
        assert "Jobs waiting or running: 2" in text


async def test_quota_unlimited(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "quota")
        assert result.ephemeral and result.response is not None and "unlimited" in result.response.content


async def test_history_paging_owner_only_and_rerun(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")

        empty = await alice.slash(channel, "history")
        assert empty.ephemeral and empty.response is not None and "no jobs" in empty.response.content

        jobs = await queue_jobs(bot, alice.id, 7)
        await queue_jobs(bot, bob.id, 1)
        result = await alice.slash(channel, "history")
        assert result.ephemeral and result.response is not None
        text = result.response.content
        assert "page 1 of 2, 7 in all" in text
        newest_first = [f"#{job.id} " for job in reversed(jobs)]
        assert all(ref in text for ref in newest_first[:5]) and newest_first[5] not in text
        assert "tiny" in text and "queued" in text and f"seed {jobs[-1].params.seeds[0]}" in text
        assert f"user {bob.id}" not in text

        # Ephemeral: nobody else can even see the buttons (simcord refuses it like Discord); the view's
        # own check is a second line.
        await alice.click(result.response, custom_id=f"animebot:history:next:{alice.id}:1")
        text = result.response.content
        assert "page 2 of 2" in text and f"#{jobs[0].id} " in text and f"#{jobs[-1].id} " not in text
        await alice.click(result.response, custom_id=f"animebot:history:previous:{alice.id}:0")
        assert "page 1 of 2" in result.response.content

        second = await alice.slash(channel, "history", page=2)
        assert second.response is not None and "page 2 of 2" in second.response.content

        before = len(await jobs_of(bot, alice.id))
        rerun = await alice.select(result.response, [str(jobs[-1].id)], custom_id=f"animebot:rerun:{alice.id}")
        assert rerun.response is not None and f"Rerolling job #{jobs[-1].id}" in rerun.response.content
        newest = (await jobs_of(bot, alice.id))[0]
        assert newest.reroll_of == jobs[-1].id and len(await jobs_of(bot, alice.id)) == before + 1


async def test_history_rerun_counts_against_the_quota(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_quota("user", f"discord:{alice.id}", "test", images_per_day=2)
        jobs = await queue_jobs(bot, alice.id, 2)
        result = await alice.slash(channel, "history")
        assert result.response is not None
        refused = await alice.select(result.response, [str(jobs[0].id)], custom_id=f"animebot:rerun:{alice.id}")
        assert refused.ephemeral and refused.response is not None
        assert "used 2 of your 2 images" in refused.response.content
        assert len(await jobs_of(bot, alice.id)) == 2


async def test_history_buttons_work_after_restart(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        jobs = await queue_jobs(bot, alice.id, 7)
        result = await alice.slash(channel, "history")
        assert result.response is not None and "page 1 of 2" in result.response.content

        await retire(bot)
        again = await make_bot()  # a new service and bot on the same data dir
        await again.service.set_paused(True)
        await env.restart_bot(again)
        await alice.click(result.response, custom_id=f"animebot:history:next:{alice.id}:1")
        assert "page 2 of 2" in result.response.content and f"#{jobs[0].id} " in result.response.content
        rerun = await alice.select(result.response, [str(jobs[0].id)], custom_id=f"animebot:rerun:{alice.id}")
        assert rerun.response is not None and f"Rerolling job #{jobs[0].id}" in rerun.response.content
        assert (await jobs_of(again, alice.id))[0].reroll_of == jobs[0].id


async def test_history_rerun_of_an_nsfw_job_is_refused_in_a_normal_channel(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        general = guild.create_text_channel("general")
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})
        alice = guild.add_member(env.create_user("alice"))
        await bot.service.set_paused(True)
        made = await alice.slash(adult, "generate", prompt="1girl", rating="explicit", steps=1)
        assert not made.ephemeral
        explicit = (await jobs_of(bot, alice.id))[0]

        listing = await alice.slash(general, "history")
        assert listing.response is not None
        refused = await alice.select(listing.response, [str(explicit.id)], custom_id=f"animebot:rerun:{alice.id}")
        assert refused.ephemeral and refused.response is not None and "age-restricted" in refused.response.content
        assert len(await jobs_of(bot, alice.id)) == 1

        listing = await alice.slash(adult, "history")
        assert listing.response is not None
        rerun = await alice.select(listing.response, [str(explicit.id)], custom_id=f"animebot:rerun:{alice.id}")
        assert rerun.response is not None and not rerun.ephemeral
        new = (await jobs_of(bot, alice.id))[0]
        assert new.reroll_of == explicit.id and new.channel_id == str(adult.id)
