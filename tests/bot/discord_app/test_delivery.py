"""Delivery through the real bot and command tree (simcord): each result reaches its user exactly once,
however reconnects (on_ready runs deliver_pending each time) and followers race; and one bad job never
holds up the others."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import simcord

from bot.core.errors import StoreBusy
from bot.core.jobs import JobRecord
from bot.discord_app.client import AnimeBot
from bot.discord_app.delivery import Delivery, Target
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from tests.cogs.conftest import BotFactory, make_bot, retire, server  # noqa: F401  (fixture)
from tests.cogs.test_generate import announced, finish, jobs_of


async def finished_while_away(bot: AnimeBot, user_id: int, channel_id: int, prompts: list[str]) -> list[JobRecord]:
    """Jobs submitted and finished without a Discord frontend following them (as while the bot was away)."""
    jobs = []
    for prompt in prompts:
        request = GenerationRequest("tiny", PromptChoices(prompt), steps=1, aspect="1:1")
        job = await bot.service.submit(request, f"discord:{user_id}", channel_id=str(channel_id))
        jobs.append(await bot.service.wait(job.id))
    return jobs


def result_posts(env: simcord.Env, channel: simcord.ChannelHandle, job_id: int) -> list[Any]:
    """Messages in the channel that carry the job's result (its images)."""
    return [m for m in channel.history() if m.attachments and f"#{job_id} " in m.content]


def pending_tasks(bot: AnimeBot) -> set[asyncio.Task[None]]:
    return {task for task in bot.deliveries.tasks if task.get_name() == "deliver-pending"}


async def delivered_rows(bot: AnimeBot, job_id: int) -> int:
    return int(await bot.service.store.scalar("SELECT COUNT(*) FROM deliveries WHERE job_id = ?", (job_id,)))


async def test_reconnects_during_a_delivery_post_each_result_once(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two reconnects while the first delivery after the start is still sending, and a third afterwards:
    each on_ready runs deliver_pending over the same undelivered jobs. Covers the in-flight guard (the
    second run must not send the job the first is sending) and the already-delivered check (the first run
    must not send again the job the second has delivered meanwhile)."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        first_job, second_job = await finished_while_away(bot, alice.id, channel.id, ["1girl", "smile"])

        entered, gate = asyncio.Event(), asyncio.Event()
        send = Delivery._send_result
        calls: list[int] = []

        async def held_first(self: Delivery, job: JobRecord, target: Target) -> Any:
            calls.append(job.id)
            if len(calls) == 1:  # the first send waits until the test lets it go
                entered.set()
                await gate.wait()
            return await send(self, job, target)

        monkeypatch.setattr(Delivery, "_send_result", held_first)
        await bot.on_ready()  # a reconnect
        await entered.wait()
        first_run = pending_tasks(bot)
        await bot.on_ready()  # another, while the first run is sending
        await asyncio.gather(*(pending_tasks(bot) - first_run))
        gate.set()
        await asyncio.gather(*first_run)
        await bot.on_ready()  # and one more afterwards
        await asyncio.gather(*pending_tasks(bot))
        await env.settle()

        for job in (first_job, second_job):
            assert len(result_posts(env, channel, job.id)) == 1
            assert await delivered_rows(bot, job.id) == 1
        assert sorted(calls) == sorted({first_job.id, second_job.id})  # nothing was even tried twice


async def test_follower_and_deliver_pending_racing_post_once(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A /generate job finishes; a reconnect's deliver_pending lists it as undelivered, but the job's follower
    delivers it before deliver_pending gets to it. Covers the already-delivered check."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.queue.set_paused(True)
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)

        pending_listed, follower_done = asyncio.Event(), asyncio.Event()
        deliver = bot.deliveries.deliver

        async def racing(job: JobRecord, target: Target) -> None:
            if target.response is not None:  # the follower of the /generate
                await pending_listed.wait()
                try:
                    await deliver(job, target)
                finally:
                    follower_done.set()
            else:  # deliver_pending, with the job it listed before the follower marked it delivered
                pending_listed.set()
                await follower_done.wait()
                await deliver(job, target)

        monkeypatch.setattr(bot.deliveries, "deliver", racing)
        await bot.service.queue.set_paused(False)
        await bot.service.wait(job.id)
        await bot.on_ready()  # a reconnect
        await asyncio.gather(*bot.deliveries.tasks)
        await env.settle()

        assert follower_done.is_set()
        assert result.response is not None and result.response.attachments  # the follower edited the reply
        assert not [m for m in channel.history() if m.attachments and m.id != result.response.id]
        assert await delivered_rows(bot, job.id) == 1


async def test_reconnects_while_jobs_wait_follow_each_job_once(make_bot: BotFactory) -> None:  # noqa: F811
    """Jobs waiting while the bot reconnects twice: deliver_pending must not take again a job already kept.
    Covers the followed-job guard: a waiting job is a record, no task; one follower per job once it starts, and
    each result replaces its own /generate reply, with no extra channel post."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        await bot.service.queue.set_paused(True)
        replies = [
            await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1"),
            await bob.slash(channel, "generate", prompt="smile", steps=1, aspect="1:1"),
        ]
        jobs = [(await jobs_of(bot, alice.id))[0], (await jobs_of(bot, bob.id))[0]]
        for _ in range(2):
            await bot.on_ready()
            await asyncio.gather(*pending_tasks(bot))
        assert not [task for task in bot.deliveries.tasks if not task.done()]  # waiting jobs cost no task
        assert bot.deliveries.waiting() == 2 and bot.service.queue.followed_positions() == 2

        await bot.service.queue.set_paused(False)
        for job, reply in zip(jobs, replies, strict=True):
            await finish(env, bot, job.id)
            assert reply.response is not None and reply.response.attachments
            assert await delivered_rows(bot, job.id) == 1
        assert not [m for m in channel.history() if m.attachments and m.interaction_metadata is None]


async def test_one_bad_job_does_not_hold_up_the_others(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At a start, three results wait: the first's PNG was deleted, the second trips a bug in delivery, the
    third is fine. The third is delivered; the first's owner is told once that its images are gone (not
    retried at every start); the second is left for the next start."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await retire(bot)
        again = await make_bot()
        missing, broken, fine = await finished_while_away(again, alice.id, channel.id, ["1girl", "smile", "1girl"])
        for image in await again.service.queue.jobs.images(missing.id):
            again.service.image_path(image.path).unlink()
        summary = Delivery._summary

        def buggy(self: Delivery, job: JobRecord, locale: str) -> str:
            if job.id == broken.id:
                raise RuntimeError("a bug in delivering this one job")
            return summary(self, job, locale)

        monkeypatch.setattr(Delivery, "_summary", buggy)
        await env.restart_bot(again)
        await env.settle()

        assert len(result_posts(env, channel, fine.id)) == 1 and await delivered_rows(again, fine.id) == 1
        told = [m for m in channel.history() if f"job #{missing.id} finished, but its images are gone" in m.content]
        assert len(told) == 1 and f"<@{alice.id}>" in told[0].content and not told[0].attachments
        assert await delivered_rows(again, missing.id) == 1
        assert await delivered_rows(again, broken.id) == 0

        monkeypatch.setattr(Delivery, "_summary", summary)  # the bug is fixed; the bot reconnects
        await again.on_ready()
        await asyncio.gather(*pending_tasks(again))
        await env.settle()
        assert len(result_posts(env, channel, broken.id)) == 1
        assert len([m for m in channel.history() if "images are gone" in m.content]) == 1


async def test_a_busy_database_when_recording_a_delivery_does_not_send_it_twice(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The result went out, but recording it meets a busy database (StoreBusy): recording is tried again,
    and the follower's retry of a failed delivery never sends the result a second time."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        bot.deliveries.retry_delays = (0.01, 0.01)
        channel, (alice,) = server(env, "alice")
        jobs = bot.service.queue.jobs
        mark = jobs.mark_delivered
        tries: list[int] = []

        async def busy_twice(job_id: int, target: str = "") -> bool:
            tries.append(job_id)
            if len(tries) <= 2:
                raise StoreBusy("database is locked")
            return await mark(job_id, target)

        monkeypatch.setattr(jobs, "mark_delivered", busy_twice)
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        await finish(env, bot, job.id)
        await asyncio.gather(*bot.deliveries.tasks)
        assert len(tries) == 3 and await delivered_rows(bot, job.id) == 1
        assert result.response is not None and result.response.attachments
        uploads = [r for r in env.http_requests if r.method == "PATCH" and "attachments" in (r.json or {})]
        assert len(uploads) == 1
        assert not [m for m in channel.history() if m.attachments and m.id != result.response.id]


async def test_a_delivery_whose_recording_gave_up_is_recorded_by_the_retry(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The result went out, but the database stayed busy past the recording's patience: the follower's retry
    records it (without sending it again), so the next start does not post it a second time."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        bot.deliveries.retry_delays = (0.01, 0.01)
        bot.deliveries.record_patience = 0.0  # the first StoreBusy ends the recording's patience
        channel, (alice,) = server(env, "alice")
        jobs = bot.service.queue.jobs
        mark = jobs.mark_delivered
        tries: list[int] = []

        async def busy_once(job_id: int, target: str = "") -> bool:
            tries.append(job_id)
            if len(tries) == 1:
                raise StoreBusy("database is locked")
            return await mark(job_id, target)

        monkeypatch.setattr(jobs, "mark_delivered", busy_once)
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        await finish(env, bot, job.id)
        await asyncio.gather(*bot.deliveries.tasks)
        assert len(tries) == 2 and await delivered_rows(bot, job.id) == 1
        assert result.response is not None and result.response.attachments
        assert not [m for m in channel.history() if m.attachments and m.id != result.response.id]


async def test_a_failed_deliver_pending_is_logged_at_once(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """deliver_pending runs in a task nobody awaits: if it dies (the database unreadable), the log says so
    when it happens, not whenever the task is garbage-collected."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60):

        async def unreadable() -> list[JobRecord]:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(bot.service, "undelivered", unreadable)
        caplog.clear()
        await bot.on_ready()
        await asyncio.wait(pending_tasks(bot))  # waits without retrieving the exception
        assert "deliver-pending failed" in caplog.text and "disk on fire" in caplog.text


async def test_a_result_for_a_deleted_channel_is_settled_once(make_bot: BotFactory) -> None:  # noqa: F811
    """A result waits for a channel that was deleted meanwhile: Discord answers Unknown Channel. It is
    recorded as undeliverable, so later starts and reconnects do not ask Discord for that channel again
    (they would, for every such job, forever); the other results are delivered."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        doomed = 4242  # a channel deleted while the bot was away: Discord knows it no more
        (lost,) = await finished_while_away(bot, alice.id, doomed, ["1girl"])
        (fine,) = await finished_while_away(bot, alice.id, channel.id, ["smile"])
        await bot.on_ready()
        await asyncio.gather(*pending_tasks(bot))
        await env.settle()
        assert len(result_posts(env, channel, fine.id)) == 1
        assert await delivered_rows(bot, lost.id) == 1

        asked = len([r for r in env.http_requests if f"/channels/{doomed}" in r.path])
        assert asked >= 1
        await bot.on_ready()  # a reconnect
        await asyncio.gather(*pending_tasks(bot))
        assert len([r for r in env.http_requests if f"/channels/{doomed}" in r.path]) == asked


def position_edits(env: simcord.Env) -> list[str]:
    return [str(r.json) for r in env.http_requests if r.method == "PATCH" and "@original" in r.path]


async def test_a_position_change_inside_the_interval_is_shown_when_it_is_up(make_bot: BotFactory) -> None:  # noqa: F811
    """The job moves up twice within one interval: the first move is shown at once, the second when the
    interval is up (a trailing edit), not dropped. The last position shown is where the job is."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        ahead = [await bot.service.submit(request, f"discord:{9000 + i}") for i in range(3)]
        await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        bot.deliveries.queue_interval = 2.0
        async with announced(bot, job.id, 3):
            await bot.service.cancel(ahead[0].id, ahead[0].owner_id)  # 4 → 3: shown at once
        async with announced(bot, job.id, 2):
            await bot.service.cancel(ahead[1].id, ahead[1].owner_id)  # 3 → 2: within the interval
        await env.settle()  # the pump's wait for the interval is part of the settling
        edits = position_edits(env)
        assert ["(position 3)" in e for e in edits[:1]] == [True] and "(position 2)" in edits[-1], edits
        assert len(edits) == 2 and bot.deliveries.position_edits == 2

        await bot.service.set_paused(False)
        await finish(env, bot, job.id)
        after = position_edits(env)
        started = next(i for i, e in enumerate(after) if "generating with tiny" in e)
        assert not [e for e in after[started:] if "queued" in e]  # no position edit after the start


async def test_far_back_the_acknowledgement_and_the_edits_say_about(make_bot: BotFactory) -> None:  # noqa: F811
    """With 24 jobs ahead the acknowledgement says "position about 30"; a job start moves it to 24, still
    "about 30": no edit. Only when it crosses into "about 20" is the message edited."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        bot.service.queue.coarse_interval = 0.0
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        ahead = [await bot.service.submit(request, f"discord:{9000 + i}") for i in range(24)]
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert result.response is not None and "(position about 30)" in result.response.content
        (job,) = await jobs_of(bot, alice.id)
        bot.deliveries.queue_interval = 0.0
        queue = bot.service.queue
        for other in ahead[:4]:  # 25 → 21: still "about 30"
            await bot.service.cancel(other.id, other.owner_id)
        passes = queue.passes
        while queue.passes < passes + 2:  # two whole passes of the announcer (a hang guard below, not a timing)
            queue.announce()
            await asyncio.wait_for(asyncio.sleep(0.05), 60)
        await env.settle()
        assert position_edits(env) == [] and queue.shown_position(job.id) == 30
        async with announced(bot, job.id, 20):
            await bot.service.cancel(ahead[4].id, ahead[4].owner_id)  # 20: "about 20"
        await env.settle()
        assert ["(position about 20)" in e for e in position_edits(env)] == [True]
        assert result.response.content.startswith(f"#{job.id} queued (position about 20)")


async def test_a_restart_with_many_waiting_jobs_delivers_each_result_once(make_bot: BotFactory) -> None:  # noqa: F811
    """Jobs waiting across a restart: deliver_pending keeps each as a record (no task, no position follow:
    there is no message to edit), and when they run each result is posted once in its channel."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        await bot.service.set_paused(True)
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        jobs = [
            await bot.service.submit(request, f"discord:{(alice, bob)[i % 2].id}", channel_id=str(channel.id))
            for i in range(30)
        ]
        await retire(bot)
        again = await make_bot()
        again_pending = Delivery.deliver_pending
        listed: list[int] = []

        async def paged(self: Delivery) -> None:
            page = self.service.unfinished_page

            async def small_pages(after: int, limit: int) -> Any:
                listed.append(after)
                return await page(after, 7)  # several pages

            self.service.unfinished_page = small_pages  # type: ignore[method-assign]
            await again_pending(self)

        Delivery.deliver_pending = paged  # type: ignore[method-assign]
        try:
            await env.restart_bot(again)
            await env.settle()
        finally:
            Delivery.deliver_pending = again_pending  # type: ignore[method-assign]
        assert len(listed) == 6  # 7 + 7 + 7 + 7 + 2, and an empty page
        assert again.deliveries.waiting() == 30 and again.service.queue.followed_positions() == 0
        assert not [task for task in again.deliveries.tasks if not task.done()]

        await again.service.set_paused(False)
        for job in jobs:
            await again.service.wait(job.id)
        await env.settle()
        for job in jobs:
            assert len(result_posts(env, channel, job.id)) == 1
            assert await delivered_rows(again, job.id) == 1
        assert again.deliveries.waiting() == 0


async def test_stuck_position_edits_never_hold_up_the_worker(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every position edit hangs (Discord slow to answer): the pump keeps at most edits_in_flight of them
    waiting, the worker claims and runs every job meanwhile, and each result is delivered."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, members = server(env, *(f"user{i}" for i in range(6)))
        bot.deliveries.queue_interval = 0.0
        bot.deliveries.edit_patience = 0.05
        stuck: list[str] = []
        never = asyncio.Event()
        edit_progress = Delivery._edit_progress

        async def hanging(self: Delivery, target: Target, text: str) -> None:
            if "queued" in text:
                stuck.append(text)
                await env.external_wait(never.wait(), reason="a position edit Discord never answers")
                return
            await edit_progress(self, target, text)

        monkeypatch.setattr(Delivery, "_edit_progress", hanging)
        await bot.service.set_paused(True)
        for member in members:
            await member.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        jobs = [(await jobs_of(bot, member.id))[0] for member in members]
        await bot.service.set_paused(False)
        for job in jobs:  # every job ran while the position edits hung
            assert (await asyncio.wait_for(bot.service.wait(job.id), 120)).state == "done"  # a hang guard
        assert stuck and len(stuck) <= bot.deliveries.edits_in_flight  # the rest waited for a slot
        never.set()  # Discord answers at last (simcord cannot settle while the pump waits for a slot)
        await env.settle()
        for job in jobs:
            assert await delivered_rows(bot, job.id) == 1


async def test_a_move_while_a_position_edit_is_in_flight_is_shown_after_it(
    make_bot: BotFactory,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job moves up while its position edit is still being sent (Discord slow to answer), and nothing else
    happens afterwards: once that edit is done, the newer position is still shown (the pump is woken for it)."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        ahead = [await bot.service.submit(request, f"discord:{9100 + i}") for i in range(3)]
        await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        bot.deliveries.queue_interval = 0.0
        slow = asyncio.Event()
        sending = asyncio.Event()
        edit_progress = Delivery._edit_progress

        async def slow_first(self: Delivery, target: Target, text: str) -> None:
            if "(position 3)" in text:
                sending.set()
                await env.external_wait(slow.wait(), reason="Discord slow to answer a position edit")
            await edit_progress(self, target, text)

        monkeypatch.setattr(Delivery, "_edit_progress", slow_first)
        async with announced(bot, job.id, 3):
            await bot.service.cancel(ahead[0].id, ahead[0].owner_id)  # 4 → 3: its edit hangs
        await asyncio.wait_for(sending.wait(), 60)  # the edit to position 3 is being sent (a hang guard)
        async with announced(bot, job.id, 2):
            await bot.service.cancel(ahead[1].id, ahead[1].owner_id)  # 3 → 2 while it is sent
        slow.set()
        await env.settle()
        edits = position_edits(env)
        assert len(edits) == 2 and "(position 3)" in edits[0] and "(position 2)" in edits[1], edits
