"""/queue through the real command tree (simcord): status for anyone, admin actions checked in code
and audited, owners cancelling their own jobs."""

from __future__ import annotations

import asyncio
import re

import discord
import simcord

from bot.core.events import Event, JobProgress
from bot.discord_app.client import AnimeBot
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_account import queue_jobs
from tests.cogs.test_generate import finish, jobs_of


async def audit_actions(bot: AnimeBot) -> list[str]:
    rows = await bot.service.store.fetchall("SELECT action FROM audit_log ORDER BY id")
    return [row["action"] for row in rows]


async def test_queue_shows_length_positions_and_idle(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice, bob) = server(env, "alice", "bob", guild=guild)

        idle = await alice.slash(channel, "queue")
        assert idle.ephemeral and idle.response is not None
        assert "0 job(s) waiting" in idle.response.content and "Nothing is running" in idle.response.content

        await queue_jobs(bot, bob.id, 1)
        mine = await queue_jobs(bot, alice.id, 2)
        result = await alice.slash(channel, "queue")
        assert result.response is not None
        text = result.response.content
        assert "3 job(s) waiting" in text and "paused" in text
        assert f"#{mine[0].id} at position 2" in text and f"#{mine[1].id} at position 3" in text
        none = await guild.add_member(env.create_user("carol")).slash(channel, "queue")
        assert none.response is not None and "no jobs waiting" in none.response.content


async def progressed(bot: AnimeBot, job_id: int, step: int) -> JobProgress:
    """Wait for the worker to report `step` of the job (a real event of the running job)."""
    reached: asyncio.Future[JobProgress] = asyncio.get_running_loop().create_future()

    def on_event(event: Event) -> None:
        if isinstance(event, JobProgress) and event.job_id == job_id and event.step >= step and not reached.done():
            reached.set_result(event)

    unlisten = bot.service.events.listen(on_event)
    try:
        return await asyncio.wait_for(reached, timeout=60)
    finally:
        unlisten()


async def test_queue_shows_and_cancels_the_running_job(make_bot: BotFactory) -> None:
    """A real running job (150 steps): /queue shows its progress; a stranger cannot cancel it, its owner
    can, and an admin can cancel anyone's (audited). It stops between steps, the user is told, and
    its images are given back to the quota."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice, bob) = server(env, "alice", "bob", guild=guild)
        mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
        mod = guild.add_member(env.create_user("mod"), roles=[mods])
        await bot.service.set_quota("user", f"discord:{alice.id}", "test", images_per_day=5)

        asked = await alice.slash(channel, "generate", prompt="1girl", steps=150, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        await progressed(bot, job.id, 2)
        shown = await alice.slash(channel, "queue")
        assert shown.response is not None
        assert re.search(rf"Running: #{job.id}, step \d+/150, about \d+s left", shown.response.content)

        refused = await bob.slash(channel, "queue", action="cancel", job=job.id)
        assert refused.response is not None and "not yours" in refused.response.content
        own = await alice.slash(channel, "queue", action="cancel", job=job.id)
        assert own.response is not None and f"Job #{job.id} stops after its current step" in own.response.content
        job = await finish(env, bot, job.id)
        assert job.state == "cancelled" and job.cancelled_by == f"discord:{alice.id}"
        assert asked.response is not None and f"job #{job.id} was cancelled" in asked.response.content
        assert await bot.service.images(job.id) == []
        quota = await alice.slash(channel, "quota")
        assert quota.response is not None and "0 of 5 (5 left)" in quota.response.content

        await alice.slash(channel, "generate", prompt="1girl", steps=150, aspect="1:1")
        second = (await jobs_of(bot, alice.id))[0]
        await progressed(bot, second.id, 2)
        by_admin = await mod.slash(channel, "queue", action="cancel", job=second.id)
        assert by_admin.response is not None and "stops after its current step" in by_admin.response.content
        second = await finish(env, bot, second.id)
        assert second.state == "cancelled" and second.cancelled_by == f"discord:{mod.id}"
        assert await audit_actions(bot) == ["quota.set", "queue.cancel"]


async def test_queue_admin_actions_refused_for_members(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        jobs = await queue_jobs(bot, alice.id, 2)
        for action in ("resume", "clear"):
            refused = await bob.slash(channel, "queue", action=action)
            assert refused.ephemeral and refused.response is not None
            assert "Only admins" in refused.response.content
        refused = await bob.slash(channel, "queue", action="cancel", job=jobs[0].id)
        assert refused.ephemeral and refused.response is not None and "not yours" in refused.response.content
        assert await bot.service.paused() and await bot.service.queue_length() == 2
        states = await bot.service.store.fetchall("SELECT state FROM jobs WHERE owner_id = ?", (f"discord:{alice.id}",))
        assert [row["state"] for row in states] == ["queued", "queued"]
        assert await audit_actions(bot) == []

        own = await alice.slash(channel, "queue", action="cancel", job=jobs[0].id)
        assert own.response is not None and f"Job #{jobs[0].id} cancelled" in own.response.content
        assert await bot.service.queue_length() == 1
        assert await audit_actions(bot) == []  # an owner's own job: no admin act


async def test_queue_admin_pause_resume_clear_cancel_audited(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice, mod) = server(env, "alice", "mod", guild=guild)
        bot.config.discord.admin_user_ids.append(mod.id)  # the queue is global: a configured bot admin

        paused = await mod.slash(channel, "queue", action="pause")
        assert paused.ephemeral and paused.response is not None and "paused" in paused.response.content
        assert await bot.service.paused()
        jobs = await queue_jobs(bot, alice.id, 3)

        cancelled = await mod.slash(channel, "queue", action="cancel", job=jobs[0].id)
        assert cancelled.response is not None and f"Job #{jobs[0].id} cancelled" in cancelled.response.content
        cleared = await mod.slash(channel, "queue", action="clear")
        assert cleared.response is not None and "Cancelled 2 waiting job(s)" in cleared.response.content
        assert await bot.service.queue_length() == 0
        resumed = await mod.slash(channel, "queue", action="resume")
        assert resumed.response is not None and "resumed" in resumed.response.content
        assert not await bot.service.paused()
        assert await audit_actions(bot) == ["queue.pause", "queue.cancel", "queue.clear", "queue.resume"]
        actors = await bot.service.store.fetchall("SELECT DISTINCT actor_id FROM audit_log")
        assert [row["actor_id"] for row in actors] == [f"discord:{mod.id}"]


async def test_queue_cancel_needs_a_job_id(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "queue", action="cancel")
        assert result.ephemeral and result.response is not None and "id of the job" in result.response.content
        missing = await alice.slash(channel, "queue", action="cancel", job=999)
        assert missing.ephemeral and missing.response is not None and "no job #999" in missing.response.content


async def test_queue_lists_ten_of_many_own_jobs_and_counts_the_rest(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        jobs = await queue_jobs(bot, alice.id, 150)  # an admin or an uncapped user can have this many
        result = await alice.slash(channel, "queue")
        assert result.response is not None
        text = result.response.content
        assert "150 job(s) waiting" in text and len(text) <= 2000
        assert f"#{jobs[9].id} at position 10, and 140 more" in text and f"#{jobs[10].id} " not in text


async def test_queue_shows_a_position_far_back_as_its_message_does(make_bot: BotFactory) -> None:
    """Beyond the exact front (bot/core/positions.py), /queue says "about N", as the job's queued message does."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        for other in range(15):  # fifteen users each with a job waiting, all served before alice's
            await queue_jobs(bot, 10_000 + other, 1)
        (mine,) = await queue_jobs(bot, alice.id, 1)
        assert await bot.service.position(mine.id) == 16
        result = await alice.slash(channel, "queue")
        assert result.response is not None
        assert f"#{mine.id} at position about 20" in result.response.content
