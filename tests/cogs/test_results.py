"""The buttons and the 🔄 reaction under a result, restarts, expired tokens, big files."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import discord
import pytest
import simcord
from PIL import Image

from bot.core.jobs import JobRecord
from bot.discord_app.client import AnimeBot
from bot.discord_app.delivery import Delivery, fit_image
from tests.cogs.conftest import BotFactory, retire, server
from tests.cogs.test_generate import finish, jobs_of


async def all_jobs(bot: AnimeBot) -> int:
    return int(await bot.service.store.scalar("SELECT COUNT(*) FROM jobs"))


async def generated(
    env: simcord.Env, bot: AnimeBot, member: simcord.MemberActor, channel: simcord.ChannelHandle
) -> tuple[JobRecord, simcord.ResponseMessage]:
    result = await member.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
    job = (await jobs_of(bot, member.id))[0]
    job = await finish(env, bot, job.id)
    assert result.response is not None and result.response.attachments
    return job, result.response


async def test_reroll_button_owner_and_stranger(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel)

        refused = await bob.click(message, custom_id=f"animebot:reroll:{job.id}")
        assert refused.response is not None and refused.ephemeral and "Only the owner" in refused.response.content
        assert await all_jobs(bot) == 1

        clicked = await alice.click(message, custom_id=f"animebot:reroll:{job.id}")
        assert not clicked.ephemeral
        callbacks = [str(r.json) for r in env.http_requests if r.method == "POST" and "/callback" in r.path]
        assert f"Rerolling job #{job.id}" in callbacks[-1]
        new = (await jobs_of(bot, alice.id))[0]
        assert new.reroll_of == job.id and new.params.seeds != job.params.seeds
        new = await finish(env, bot, new.id)
        assert clicked.response is not None and new.delivered and clicked.response.attachments

        info = await bob.click(message, custom_id=f"animebot:info:{job.id}")
        assert info.response is not None and info.ephemeral and f"seeds {job.params.seeds[0]}" in info.response.content


async def test_reroll_reaction(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel)

        await bob.react(message.message, "🔄")
        assert await all_jobs(bot) == 1
        own = await bot.get_partial_messageable(channel.id).fetch_message(message.id)
        await own.add_reaction("🔄")
        await env.settle()
        assert await all_jobs(bot) == 1

        await alice.react(message.message, "🔄")
        new = (await jobs_of(bot, alice.id))[0]
        assert new.reroll_of == job.id
        new = await finish(env, bot, new.id)
        assert new.delivered
        last = channel.last_message  # a channel post mentioning the user, edited into the result
        assert last is not None and last.attachments and f"#{new.id}" in last.content
        posts = [str(r.json) for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")]
        assert f"<@{alice.id}> Rerolling job #{job.id}" in posts[-1]


async def test_reroll_reaction_by_anyone_when_configured(make_bot: BotFactory) -> None:
    bot = await make_bot("[discord]\nreroll_by_anyone = true\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel)
        await bob.react(message.message, "🔄")
        (new,) = await jobs_of(bot, bob.id)
        assert new.reroll_of == job.id
        await finish(env, bot, new.id)


async def test_delete_button_owner_or_admin(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel)
        refused = await bob.click(message, custom_id=f"animebot:delete:{job.id}")
        assert refused.response is not None and refused.ephemeral and "Only the owner" in refused.response.content
        assert any(m.id == message.id for m in channel.history())
        deleted = await alice.click(message, custom_id=f"animebot:delete:{job.id}")
        assert deleted.ephemeral
        assert not any(m.id == message.id for m in channel.history())


async def test_buttons_work_after_restart(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, message = await generated(env, bot, alice, channel)

        await retire(bot)
        again = await make_bot()  # a new service and bot on the same data dir
        await env.restart_bot(again)
        info = await alice.click(message, custom_id=f"animebot:info:{job.id}")
        assert info.response is not None and info.ephemeral and f"Job #{job.id}" in info.response.content
        clicked = await alice.click(message, custom_id=f"animebot:reroll:{job.id}")
        assert not clicked.ephemeral
        new = (await jobs_of(again, alice.id))[0]
        assert new.reroll_of == job.id
        await finish(env, again, new.id)


async def test_expired_token_falls_back_to_a_channel_post(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert result.acknowledged
        (job,) = await jobs_of(bot, alice.id)
        await env.advance_time(16 * 60)  # the interaction token is dead now
        await bot.service.set_paused(False)
        job = await finish(env, bot, job.id)
        assert job.delivered
        assert result.response is not None and not result.response.attachments
        last = channel.last_message
        assert last is not None and f"<@{alice.id}>" in last.content and last.attachments
        target = await bot.service.store.scalar("SELECT target FROM deliveries WHERE job_id = ?", (job.id,))
        assert target == f"{channel.id}:{last.id}"


async def test_results_finished_while_away_are_delivered_at_start(make_bot: BotFactory) -> None:
    from bot.prompts.builder import PromptChoices
    from bot.prompts.requests import GenerationRequest

    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await retire(bot)
        again = await make_bot()
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        job = await again.service.submit(request, f"discord:{alice.id}", channel_id=str(channel.id))
        await again.service.wait(job.id)
        await env.restart_bot(again)
        await env.settle()
        record = await again.service.job(job.id)
        assert record is not None and record.delivered
        last = channel.last_message
        assert last is not None and f"<@{alice.id}>" in last.content and last.attachments


async def test_jobs_still_queued_at_start_are_delivered_when_they_finish(make_bot: BotFactory) -> None:
    from bot.prompts.builder import PromptChoices
    from bot.prompts.requests import GenerationRequest

    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await retire(bot)
        again = await make_bot()
        await again.service.set_paused(True)  # submitted before the restart, not run yet
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        job = await again.service.submit(request, f"discord:{alice.id}", channel_id=str(channel.id))
        await env.restart_bot(again)
        await env.settle()
        await again.service.set_paused(False)
        await again.service.wait(job.id)
        await env.settle()
        record = await again.service.job(job.id)
        assert record is not None and record.delivered
        last = channel.last_message
        assert last is not None and f"<@{alice.id}>" in last.content and last.attachments


def test_fit_image_reencodes_to_fit() -> None:
    image = Image.effect_noise((256, 256), 80).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    png = out.getvalue()
    assert fit_image(png, len(png), "a.png") == (png, "a.png")
    small, name = fit_image(png, 8000, "a.png")
    assert name == "a.jpg" and len(small) <= 8000
    assert Image.open(io.BytesIO(small)).format == "JPEG"
    tiny, _ = fit_image(png, 1500, "a.png")
    assert len(tiny) <= 1500


async def test_oversize_file_is_reencoded_on_delivery(make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Delivery, "upload_limit", lambda self, target: 1500)  # simcord has no upload limits
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        _, message = await generated(env, bot, alice, channel)
        (attachment,) = message.attachments
        assert attachment.filename.endswith(".jpg")
        assert len(await attachment.read()) <= 1500


def test_thread_and_dm_nsfw_rules() -> None:
    from unittest.mock import Mock

    from bot.discord_app.permissions import channel_allows_nsfw

    adult = Mock(spec=discord.TextChannel)
    adult.is_nsfw.return_value = True
    normal = Mock(spec=discord.TextChannel)
    normal.is_nsfw.return_value = False
    thread = Mock(spec=discord.Thread)
    thread.parent = adult
    assert channel_allows_nsfw(adult) and channel_allows_nsfw(thread)
    thread.parent = normal
    assert not channel_allows_nsfw(thread) and not channel_allows_nsfw(normal)
    assert not channel_allows_nsfw(Mock(spec=discord.DMChannel)) and not channel_allows_nsfw(None)


async def test_admin_may_delete_anyones_result(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
        mod = guild.add_member(env.create_user("mod"), roles=[mods])
        job, message = await generated(env, bot, alice, channel)
        deleted = await mod.click(message, custom_id=f"animebot:delete:{job.id}")
        assert deleted.ephemeral and deleted.response is not None and "Deleted" in deleted.response.content
        assert not any(m.id == message.id for m in channel.history())


async def test_failed_job_tells_the_user(make_bot: BotFactory, tmp_path: Path) -> None:
    bot = await make_bot(f'[models.broken]\nfamily = "sdxl"\npath = "{tmp_path / "missing"}"\n')
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        await bot.service.store.execute(
            "INSERT INTO guild_settings (guild_id, active_model, updated_at) VALUES (?, 'broken', 0)", (str(guild.id),)
        )
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1)
        (job,) = await jobs_of(bot, alice.id)
        job = await finish(env, bot, job.id)
        assert job.state == "failed" and job.delivered
        assert result.response is not None and f"job #{job.id} failed" in result.response.content


async def test_failed_edit_falls_back_to_a_channel_post(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        env.inject_error("PATCH", "/webhooks/*/messages/@original", status=404, code=10008, times=None)
        await bot.service.set_paused(False)
        job = await finish(env, bot, job.id)
        assert job.delivered and result.response is not None and not result.response.attachments
        last = channel.last_message
        assert last is not None and last.id != result.response.id
        assert f"<@{alice.id}>" in last.content and last.attachments


async def test_unacknowledged_request_still_gets_its_result(make_bot: BotFactory) -> None:
    """Discord failed the acknowledgement (a hiccup): the job is queued, so its result is posted."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        env.inject_error("POST", "/interactions/*/callback", status=404, code=10062, message="Unknown interaction")
        await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        job = await finish(env, bot, job.id)
        assert job.delivered
        last = channel.last_message
        assert last is not None and f"<@{alice.id}>" in last.content and last.attachments


async def test_failed_delivery_is_tried_again(make_bot: BotFactory) -> None:
    """The edit and the first channel post fail (e.g. a permission fixed a moment later): delivery
    tries again and the result arrives, once."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        bot.deliveries.retry_delays = (0.05, 0.05)
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        env.inject_error("PATCH", "/webhooks/*/messages/@original", status=404, code=10008, times=None)
        env.inject_error("POST", "/channels/*/messages", status=403, code=50013, message="Missing Permissions")
        await bot.service.set_paused(False)
        await bot.service.wait(job.id)
        for _ in range(100):
            record = await bot.service.job(job.id)
            if record is not None and record.delivered:
                break
            await asyncio.sleep(0.02)  # the retry waits a pause first
            await env.settle()
        assert record is not None and record.delivered
        posts = [r for r in env.http_requests if r.method == "POST" and r.path.endswith("/messages")]
        assert len(posts) == 2  # the refused one, then the delivered one
        last = channel.last_message
        assert last is not None and f"<@{alice.id}>" in last.content and last.attachments


async def test_a_failure_after_a_reroll_is_queued_still_delivers_it(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reroll is queued, then reading its position fails: the clicker gets the short error, and the new
    job is still followed, its result posted in the channel (not left for a restart)."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, message = await generated(env, bot, alice, channel)

        async def broken(job_id: int) -> int | None:
            raise RuntimeError("position on fire")

        monkeypatch.setattr(bot.service, "position", broken)
        clicked = await alice.click(message, custom_id=f"animebot:reroll:{job.id}")
        assert clicked.response is not None and "Something went wrong" in clicked.response.content
        new = (await jobs_of(bot, alice.id))[0]
        assert new.reroll_of == job.id
        new = await finish(env, bot, new.id)
        await asyncio.gather(*bot.deliveries.tasks)
        await env.settle()
        assert (await bot.service.job(new.id)).delivered  # type: ignore[union-attr]
        posts = [m for m in channel.history() if m.attachments and f"#{new.id}" in m.content]
        assert len(posts) == 1


async def test_reroll_reaction_in_an_uncached_channel_keeps_its_server(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 🔄 reaction in a channel the bot has not cached: the channel is fetched, so the new job belongs to the
    channel's server (whose admins manage it) rather than to none."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, message = await generated(env, bot, alice, channel)
        assert job.guild_id is not None
        cached = bot.get_channel
        monkeypatch.setattr(bot, "get_channel", lambda id: None if id == channel.id else cached(id))

        await alice.react(message.message, "🔄")
        new = (await jobs_of(bot, alice.id))[0]
        assert new.reroll_of == job.id
        assert (new.guild_id, new.channel_id) == (job.guild_id, str(channel.id))
        new = await finish(env, bot, new.id)
        assert new.delivered


async def test_delete_button_says_deleted_only_once_it_is(make_bot: BotFactory) -> None:
    """Discord refuses the deletion (a missing permission, an outage): the owner is told it went wrong, never
    that the result was deleted while it still stands."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, message = await generated(env, bot, alice, channel)
        env.inject_error("DELETE", "/channels/*/messages/*", status=403, code=50013, message="Missing Permissions")
        clicked = await alice.click(message, custom_id=f"animebot:delete:{job.id}")
        assert any(m.id == message.id for m in channel.history())
        assert clicked.ephemeral and clicked.response is not None
        answers = [clicked.response.content, *(m.content for m in clicked.followups)]
        assert "Something went wrong" in " ".join(answers) and not [a for a in answers if "Deleted" in a]


async def test_a_reroll_far_back_in_the_queue_says_about_where(make_bot: BotFactory) -> None:
    """The reroll's notice shows the position as the job's later edits will (bot/core/positions.py): "about N"
    beyond the exact front."""
    from tests.cogs.test_account import queue_jobs

    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, message = await generated(env, bot, alice, channel)
        for other in range(15):  # fifteen users with a job waiting (paused): alice's reroll comes after them
            await queue_jobs(bot, 20_000 + other, 1)
        await alice.click(message, custom_id=f"animebot:reroll:{job.id}")
        new = next(j for j in await jobs_of(bot, alice.id) if j.reroll_of == job.id)
        assert await bot.service.position(new.id) == 16
        callbacks = [str(r.json) for r in env.http_requests if r.method == "POST" and "/callback" in r.path]
        assert f"Rerolling job #{job.id} as #{new.id} (position about 20)." in callbacks[-1]
