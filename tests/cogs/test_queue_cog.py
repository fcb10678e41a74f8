"""/queue through the real command tree (simcord): status for anyone, admin actions checked in code
and audited, owners cancelling their own jobs."""

from __future__ import annotations

import discord
import simcord

from bot.app import AnimeBot
from bot.events import JobProgress
from tests.cogs.conftest import BotFactory
from tests.cogs.test_account import queue_jobs


async def audit_actions(bot: AnimeBot) -> list[str]:
    rows = await bot.service.store.fetchall("SELECT action FROM audit_log ORDER BY id")
    return [row["action"] for row in rows]


async def test_queue_shows_length_positions_and_idle(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))
        bob = guild.add_member(env.create_user("bob"))

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


async def test_queue_reports_the_last_progress_of_the_running_job(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))
        (job,) = await queue_jobs(bot, alice.id, 1)
        bot.service.queue.running = job.id  # as the worker does when it claims the job
        try:
            starting = await alice.slash(channel, "queue")
            assert starting.response is not None and f"Running: #{job.id} (starting)" in starting.response.content
            bot.service.events.publish(JobProgress(job.id, 3, 8, 1.0, 4.2))
            result = await alice.slash(channel, "queue")
            assert result.response is not None and f"#{job.id}, step 3/8, about 4s left" in result.response.content
        finally:
            bot.service.queue.running = None


async def test_queue_admin_actions_refused_for_members(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))
        bob = guild.add_member(env.create_user("bob"))
        jobs = await queue_jobs(bot, alice.id, 2)
        for action in ("resume", "clear"):
            refused = await bob.slash(channel, "queue", action=action)
            assert refused.ephemeral and refused.response is not None
            assert "Only admins" in refused.response.content
        refused = await bob.slash(channel, "queue", action="cancel", job=jobs[0].id)
        assert refused.ephemeral and refused.response is not None and "not yours" in refused.response.content
        assert bot.service.queue.paused and len(bot.service.queue) == 2
        states = await bot.service.store.fetchall("SELECT state FROM jobs WHERE owner_id = ?", (f"discord:{alice.id}",))
        assert [row["state"] for row in states] == ["queued", "queued"]
        assert await audit_actions(bot) == []

        own = await alice.slash(channel, "queue", action="cancel", job=jobs[0].id)
        assert own.response is not None and f"Job #{jobs[0].id} cancelled" in own.response.content
        assert len(bot.service.queue) == 1 and await audit_actions(bot) == []  # an owner's own job: no admin act


async def test_queue_admin_pause_resume_clear_cancel_audited(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))
        mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
        mod = guild.add_member(env.create_user("mod"), roles=[mods])

        paused = await mod.slash(channel, "queue", action="pause")
        assert paused.ephemeral and paused.response is not None and "paused" in paused.response.content
        assert bot.service.queue.paused
        jobs = await queue_jobs(bot, alice.id, 3)

        cancelled = await mod.slash(channel, "queue", action="cancel", job=jobs[0].id)
        assert cancelled.response is not None and f"Job #{jobs[0].id} cancelled" in cancelled.response.content
        cleared = await mod.slash(channel, "queue", action="clear")
        assert cleared.response is not None and "Cancelled 2 waiting job(s)" in cleared.response.content
        assert len(bot.service.queue) == 0
        resumed = await mod.slash(channel, "queue", action="resume")
        assert resumed.response is not None and "resumed" in resumed.response.content
        assert not bot.service.queue.paused
        assert await audit_actions(bot) == ["queue.pause", "queue.cancel", "queue.clear", "queue.resume"]
        actors = await bot.service.store.fetchall("SELECT DISTINCT actor_id FROM audit_log")
        assert [row["actor_id"] for row in actors] == [f"discord:{mod.id}"]


async def test_queue_cancel_needs_a_job_id(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        alice = guild.add_member(env.create_user("alice"))
        result = await alice.slash(channel, "queue", action="cancel")
        assert result.ephemeral and result.response is not None and "id of the job" in result.response.content
        missing = await alice.slash(channel, "queue", action="cancel", job=999)
        assert missing.ephemeral and missing.response is not None and "no job #999" in missing.response.content
