"""A database locked by another process must not make Discord late, nor lose the request (issue 8, bug 5):
/generate is acknowledged first (deferred) when the store is slow, the job is queued when the lock goes,
and the user gets the queued message and then the result. A store that stays busy is tried again; only
after the bot's patience is spent is the user told, ephemerally, that nothing was queued.

Over the loopback Discord (real time: simcord runs the bot's timers on its virtual clock, which does not
move while the bot waits for a database thread). No timing is asserted: the tests read the order of the
bot's requests to Discord."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import pytest

from bot.core.errors import StoreBusy
from bot.core.store import Store
from bot.discord_app import acknowledge
from bot.discord_app.client import AnimeBot
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from tests.cogs.conftest import BotFactory
from tests.cogs.test_wire import TIMEOUT, delivered, fake_discord, jobs_of, online  # noqa: F401  (fixture)
from tests.fakes.discord_server import EPHEMERAL, FakeDiscord


def calls(fake: FakeDiscord, token: str) -> list[tuple[str, Any]]:
    """The bot's requests about one interaction, in order: ("callback", type), ("edit", content),
    ("delete", None), ("followup", body)."""
    seen: list[tuple[str, Any]] = []
    for r in fake.requests:
        if token not in r.path:
            continue
        if r.method == "POST" and r.path.endswith("/callback"):
            seen.append(("callback", r.json["type"]))
        elif r.method == "PATCH" and r.path.endswith("/messages/@original"):
            seen.append(("edit", r.json.get("content") if not r.files else "(images)"))
        elif r.method == "DELETE" and r.path.endswith("/messages/@original"):
            seen.append(("delete", None))
        elif r.method == "POST" and r.path.startswith("/webhooks/"):
            seen.append(("followup", r.json))
    return seen


async def first_callback(fake: FakeDiscord, token: str) -> int:
    """Wait until the bot answers the interaction; its callback type (4: a message, 5: deferred)."""

    async def poll() -> int:
        while not (found := [kind for what, kind in calls(fake, token) if what == "callback"]):
            await asyncio.sleep(0.02)
        return int(found[0])

    return await asyncio.wait_for(poll(), TIMEOUT)


async def ask(fake: FakeDiscord, prompt: str = "1girl") -> tuple[dict[str, Any], int]:
    """alice's /generate; the interaction and alice's id."""
    alice = fake.add_member("alice")
    command = fake.slash("generate", alice, prompt=prompt, steps=1, aspect="1:1", quality="none")
    await fake.dispatch("INTERACTION_CREATE", command)
    return command, int(alice["user"]["id"])


async def settled(bot: AnimeBot, job_id: int) -> None:
    await asyncio.wait_for(bot.service.wait(job_id), TIMEOUT)
    await delivered(bot)


class WriteLock:
    """Another connection (in another thread, like another process) holding BEGIN IMMEDIATE on the file."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self.taken, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO bot_state (key, value) VALUES ('other process', 'was here')")
            self.taken.set()
            self.release.wait(60)
            connection.execute("COMMIT")
        finally:
            connection.close()

    async def __aenter__(self) -> WriteLock:
        self.thread.start()
        assert await asyncio.to_thread(self.taken.wait, 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await asyncio.to_thread(self.thread.join, 30)


async def test_a_locked_database_defers_then_queues(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:  # noqa: F811
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake):
        async with WriteLock(bot.config.database) as lock:
            command, alice = await ask(fake)
            kind = await first_callback(fake, command["token"])  # Discord is answered while the submit waits
            assert await asyncio.to_thread(count_jobs, bot.config.database) == 0  # the lock still holds
            await asyncio.to_thread(lock.release.wait, 1.0)  # hold it a moment longer, then let go
        assert kind == 5  # deferred ("thinking…"), not answered late
        await asyncio.wait_for(until_jobs(bot, alice), TIMEOUT)
        (job,) = await jobs_of(bot, alice)
        await settled(bot, job.id)
        sequence = calls(fake, command["token"])
        assert [k for w, k in sequence if w == "callback"] == [5]
        assert sequence[1] == ("edit", f"#{job.id} queued (position 1): 1girl")
        assert sequence[-1] == ("edit", "(images)")
        assert await bot.service.store.scalar("SELECT value FROM bot_state WHERE key = 'other process'") == "was here"


async def test_a_lock_held_past_the_busy_timeout_is_waited_out(
    make_bot: BotFactory,
    fake_discord: FakeDiscord,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real store, not a fake: a lock held longer than its busy timeout makes the submit fail with
    StoreBusy (issue 8's 8 s lock against the 5 s timeout, shortened here); the request is tried again
    until the lock goes, then queued and answered."""
    monkeypatch.setattr(Store, "BUSY_TIMEOUT", 0.2)  # read when the store opens
    monkeypatch.setattr(acknowledge, "BUSY_FIRST_DELAY", 0.05)
    fake = fake_discord
    bot = await make_bot()
    busy: list[StoreBusy] = []
    real_submit = bot.service.submit

    async def submit(*args: Any, **kwargs: Any) -> Any:
        try:
            return await real_submit(*args, **kwargs)
        except StoreBusy as error:
            busy.append(error)
            raise

    monkeypatch.setattr(bot.service, "submit", submit)
    async with online(bot, fake):
        async with WriteLock(bot.config.database):
            command, alice = await ask(fake)
            assert await first_callback(fake, command["token"]) == 5  # deferred while the lock holds

            async def outlasted() -> None:
                while len(busy) < 2:  # the store gave up at least twice: the timeout was really exceeded
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(outlasted(), TIMEOUT)
            assert await asyncio.to_thread(count_jobs, bot.config.database) == 0
        await asyncio.wait_for(until_jobs(bot, alice), TIMEOUT)
        (job,) = await jobs_of(bot, alice)
        await settled(bot, job.id)
        sequence = calls(fake, command["token"])
        assert sequence[:2] == [("callback", 5), ("edit", f"#{job.id} queued (position 1): 1girl")]
        assert sequence[-1] == ("edit", "(images)")


def count_jobs(path: Any) -> int:
    """Read with a connection of its own: the bot's one connection is busy waiting for the lock."""
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    finally:
        connection.close()


async def until_jobs(bot: AnimeBot, user_id: int) -> None:
    while not await jobs_of(bot, user_id):
        await asyncio.sleep(0.02)


async def test_a_fast_store_is_answered_at_once(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:  # noqa: F811
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake):
        command, alice = await ask(fake)
        assert await first_callback(fake, command["token"]) == 4
        (job,) = await jobs_of(bot, alice)
        await settled(bot, job.id)


def busy_submit(bot: AnimeBot, monkeypatch: pytest.MonkeyPatch, *, busy_times: int) -> tuple[asyncio.Event, list[int]]:
    """Make the service's submit slow (until the returned event is set), then busy `busy_times` times."""
    real = bot.service.submit
    gate = asyncio.Event()
    attempts: list[int] = []

    async def submit(*args: Any, **kwargs: Any) -> Any:
        attempts.append(len(attempts) + 1)
        await gate.wait()
        if len(attempts) <= busy_times:
            raise StoreBusy("database is locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(bot.service, "submit", submit)
    monkeypatch.setattr(acknowledge, "BUSY_FIRST_DELAY", 0.01)
    return gate, attempts


async def test_a_busy_store_is_tried_again_while_the_user_waits(
    make_bot: BotFactory,
    fake_discord: FakeDiscord,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake):
        gate, attempts = busy_submit(bot, monkeypatch, busy_times=3)
        command, alice = await ask(fake)
        assert await first_callback(fake, command["token"]) == 5
        gate.set()
        await asyncio.wait_for(until_jobs(bot, alice), TIMEOUT)
        assert attempts == [1, 2, 3, 4]
        (job,) = await jobs_of(bot, alice)
        await settled(bot, job.id)
        sequence = calls(fake, command["token"])
        assert sequence[:2] == [("callback", 5), ("edit", f"#{job.id} queued (position 1): 1girl")]
        assert sequence[-1] == ("edit", "(images)")


async def test_a_store_busy_past_the_patience_tells_the_user_nothing_was_queued(
    make_bot: BotFactory,
    fake_discord: FakeDiscord,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake):
        gate, attempts = busy_submit(bot, monkeypatch, busy_times=1000)
        monkeypatch.setattr(acknowledge, "BUSY_PATIENCE", 0.05)
        command, _ = await ask(fake)
        token = command["token"]
        assert await first_callback(fake, token) == 5
        gate.set()

        async def told() -> None:
            while not any(what == "followup" for what, _ in calls(fake, token)):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(told(), TIMEOUT)
        assert attempts  # tried (and again while the patience lasted)
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0
        sequence = calls(fake, token)
        assert sequence[:2] == [("callback", 5), ("delete", None)]  # the public "thinking…" goes away
        (what, body), *rest = sequence[2:]
        assert what == "followup" and body["flags"] & EPHEMERAL and not rest
        assert "nothing was queued" in body["content"]


async def test_every_command_waiting_behind_the_lock_is_deferred(
    make_bot: BotFactory,
    fake_discord: FakeDiscord,  # noqa: F811
) -> None:
    """While one /generate's write waits for the lock, every other statement waits behind it on the bot's
    one database connection: a second /generate (its model lookup) and a /quota (a read) are deferred too,
    ephemerally for /quota, and answered once the lock goes."""
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake):
        bob = fake.add_member("bob")
        bob_id = int(bob["user"]["id"])
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        earlier = await bot.service.submit(request, f"discord:{bob_id}", channel_id=str(fake.channel_id))
        history = fake.slash("history", bob)
        await fake.dispatch("INTERACTION_CREATE", history)
        assert await first_callback(fake, history["token"]) == 4
        listed = next(r for r in fake.requests if r.path.endswith(f"/{history['token']}/callback"))
        page = fake.click(int(listed.response["resource"]["message"]["id"]), f"animebot:history:next:{bob_id}:0", bob)

        async with WriteLock(bot.config.database):
            first, alice = await ask(fake)
            second = fake.slash("generate", bob, prompt="smile", steps=1, aspect="1:1")
            quota = fake.slash("quota", bob)
            for interaction in (second, quota, page):
                await fake.dispatch("INTERACTION_CREATE", interaction)
            kinds = [await first_callback(fake, i["token"]) for i in (first, second, quota, page)]
        assert kinds == [5, 5, 5, 6]  # 6: a deferred update of the history list
        (deferred_quota,) = [r for r in fake.requests if r.path.endswith(f"/{quota['token']}/callback")]
        assert deferred_quota.json["data"]["flags"] & EPHEMERAL

        for user_id, interaction in ((alice, first), (bob_id, second)):
            await asyncio.wait_for(until_jobs(bot, user_id), TIMEOUT)
            job = (await jobs_of(bot, user_id))[-1]
            await settled(bot, job.id)
            sequence = calls(fake, interaction["token"])
            assert sequence[0] == ("callback", 5) and sequence[1][0] == "edit" and "queued" in sequence[1][1]

        async def answered() -> None:
            while len(calls(fake, quota["token"])) < 2:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(answered(), TIMEOUT)
        what, content = calls(fake, quota["token"])[1]
        assert what == "edit" and content.startswith("Images in the last 24 hours")
        await settled(bot, earlier.id)
        what, content = calls(fake, page["token"])[1]
        assert what == "edit" and content.startswith("Your jobs (page 1 of 1")
