"""The real bot (discord.py client, command tree, delivery) against a loopback Discord over HTTP and the
gateway websocket: login and READY, command registration, one /generate, one 🔄 reroll and one ⬆ upscale whose
PNGs arrive as multipart uploads."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
from PIL import Image

from bot.core.jobs import JobRecord
from bot.discord_app.client import AnimeBot, intents
from tests.cogs.conftest import BotFactory, retire
from tests.cogs.test_mentions import check_payloads
from tests.fakes.discord_server import PNG_SIGNATURE, FakeDiscord, GatewaySession, RecordedRequest

TIMEOUT = 30.0
STEPS = 2


@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """The loopback Discord, with discord.py's REST base and gateway pointed at it (restored afterwards)."""
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", fake.gateway_url)
    yield fake
    await fake.close()


@asynccontextmanager
async def online(bot: AnimeBot, fake: FakeDiscord) -> AsyncIterator[GatewaySession]:
    """`bot.start(token)` until it is ready (or fails); on exit `bot.close()`, and the client must have
    closed its gateway connection and left no task running."""
    ready = asyncio.Event()

    async def on_ready() -> None:
        ready.set()

    bot.add_listener(on_ready)
    bot._connection.guild_ready_timeout = 0.1  # GUILD_CREATE follows READY at once here
    before = asyncio.all_tasks()
    runner = asyncio.create_task(bot.start(fake.token), name="bot-start")
    waiter = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait({runner, waiter}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            runner.result()  # the login's or the gateway's error
            raise AssertionError("the bot stopped before it was ready")
        assert waiter in done, "the bot was not ready in time"
        session = fake.sessions[-1]
        yield session
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await bot.close()
        await asyncio.wait_for(runner, TIMEOUT)
    await asyncio.wait_for(session.closed.wait(), TIMEOUT)
    # The client closed the socket. discord.py means 1000, but its poll loop, woken by aiohttp's close,
    # closes first with its reconnect code 4000.
    assert session.close_code in (1000, 4000)
    left = {t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()}
    # discord.py gives the view of an ephemeral message (the /history list) a 15-minute timeout task of its
    # own, which the client's close leaves to expire; the list's buttons are persistent DynamicItems anyway.
    left = {t for t in left if not getattr(t.get_coro(), "__qualname__", "").endswith("__timeout_task_impl")}
    assert not left, left


def request_to(method: str, path: str, *, files: bool | None = None) -> Callable[[RecordedRequest], bool]:
    """A predicate for `fake.wait_for_request`: this method and exact path (and with or without files)."""

    def matches(r: RecordedRequest) -> bool:
        return r.method == method and r.path == path and (files is None or bool(r.files) == files)

    return matches


def png_parameters(data: bytes, job: JobRecord) -> str:
    """Check an uploaded image is the job's PNG and return its A1111 `parameters` text."""
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert image.size == (job.params.width, job.params.height)
    parameters = image.info.get("parameters")
    assert isinstance(parameters, str), image.info
    return parameters


def seed_of(parameters: str) -> int:
    match = re.search(r"\bSeed: (\d+)", parameters)
    assert match is not None, parameters
    return int(match[1])


def custom_ids(payload: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in payload["components"] for c in row["components"]]


async def jobs_of(bot: AnimeBot, user_id: int) -> list[JobRecord]:
    jobs, _ = await bot.service.history(f"discord:{user_id}", 0, 50)
    return sorted(jobs, key=lambda job: job.id)


async def delivered(bot: AnimeBot) -> None:
    """Wait for the delivery tasks running now (the PATCH was answered; the job is being marked)."""
    await asyncio.wait_for(asyncio.gather(*bot.deliveries.tasks), TIMEOUT)


async def test_login_ready_and_command_sync_once(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake) as session:
        # Login over REST with the bot token, then the gateway: HELLO, heartbeat, IDENTIFY, READY, GUILD_CREATE.
        (me,) = fake.find("GET", "/users/@me")
        assert me.headers["Authorization"] == f"Bot {fake.token}"
        assert len(fake.find("GET", "/oauth2/applications/@me")) == 1
        # zstd-stream when compression.zstd or zstandard is importable; the fake speaks both.
        assert session.query in (
            {"v": "10", "encoding": "json", "compress": "zlib-stream"},
            {"v": "10", "encoding": "json", "compress": "zstd-stream"},
        )
        assert session.identify is not None
        assert session.identify["token"] == fake.token
        assert session.identify["intents"] == intents().value
        assert session.heartbeats >= 1  # discord.py beats right after HELLO and needs the ACK
        assert bot.user is not None and bot.user.id == fake.application_id
        assert bot.application_id == fake.application_id
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None and not guild.unavailable
        assert guild.default_role.id == fake.guild_id
        channel = guild.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        assert guild.me is not None and guild.me.id == fake.application_id

        # setup_hook registered the global commands once, with their Japanese descriptions.
        (put,) = fake.find("PUT", rf"/applications/{fake.application_id}/commands")
        assert put.status == 200
        assert not fake.find("PUT", r"/applications/\d+/guilds/\d+/commands")
        assert bot.synced
        generate = next(c for c in put.json if c["name"] == "generate")
        options = {o["name"]: o for o in generate["options"]}
        assert {"prompt", "quality", "year", "rating", "artist"} <= options.keys()
        assert options["prompt"]["required"] is True and options["prompt"]["type"] == 3
        assert all(options[name]["autocomplete"] for name in ("quality", "year", "rating", "artist"))
        assert generate["description_localizations"]["ja"]
        assert generate["description_localizations"]["ja"] != generate["description"]
        assert all(o["description_localizations"]["ja"] for o in generate["options"])
        assert {c["name"] for c in fake.commands[None]} == {c["name"] for c in put.json}

    # A restart on the same data directory: a fresh IDENTIFY, but the unchanged tree is not sent again.
    await retire(bot)
    again = await make_bot()
    async with online(again, fake) as second:
        assert second is not session and second.identify is not None
        assert len(fake.find("PUT", rf"/applications/{fake.application_id}/commands")) == 1
        assert not again.synced
    assert len(fake.find("GET", "/users/@me")) == 2


async def test_guild_ids_sync_to_each_guild(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = await make_bot(f"[discord]\nguild_ids = [{fake.guild_id}]\n")
    async with online(bot, fake):
        (put,) = fake.find("PUT", rf"/applications/{fake.application_id}/guilds/{fake.guild_id}/commands")
        assert "generate" in {c["name"] for c in put.json}
        assert not fake.find("PUT", rf"/applications/{fake.application_id}/commands")


async def test_generate_and_reroll_over_the_wire(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = await make_bot()
    async with online(bot, fake):
        bot.deliveries.progress_interval = 0.0  # every progress event becomes an edit
        alice = fake.add_member("alice")
        alice_id = int(alice["user"]["id"])

        # /generate: the callback acknowledges with the queue position ...
        command = fake.slash("generate", alice, prompt="1girl, smile", seed=42, steps=STEPS, aspect="1:1")
        await fake.dispatch("INTERACTION_CREATE", command)
        callback = await fake.wait_for_request(
            request_to("POST", f"/interactions/{command['id']}/{command['token']}/callback"), timeout=TIMEOUT
        )
        assert callback.status == 200 and callback.query == {"with_response": "1"}
        assert callback.content_type == "application/json" and callback.json["type"] == 4
        (job,) = await jobs_of(bot, alice_id)
        assert callback.json["data"]["content"].startswith(f"#{job.id} queued (position 1): 1girl, smile")
        assert job.params.seeds == (42,) and job.channel_id == str(fake.channel_id)

        # ... progress edits the original response, then the result replaces it with the image.
        original = f"/webhooks/{fake.application_id}/{command['token']}/messages/@original"
        final = await fake.wait_for_request(request_to("PATCH", original, files=True), timeout=TIMEOUT)
        edits = fake.find("PATCH", re.escape(original))
        assert edits[-1] is final and all(not e.files for e in edits[:-1])
        assert any(f"step {STEPS}/{STEPS}" in e.json["content"] for e in edits[:-1]), [e.json for e in edits]
        assert final.status == 200 and final.content_type == "multipart/form-data"
        (upload,) = final.files
        assert upload.field == "files[0]" and upload.filename.endswith(".png")
        job = await bot.service.wait(job.id)
        parameters = png_parameters(upload.data, job)
        assert "1girl, smile" in parameters and seed_of(parameters) == 42 and f"Steps: {STEPS}" in parameters
        assert final.json["content"].startswith(f"#{job.id} tiny · seed 42 · 64x64")
        assert [a["id"] for a in final.json["attachments"]] == [0]
        assert final.json["attachments"][0]["filename"] == upload.filename
        assert custom_ids(final.json) == [
            f"animebot:reroll:{job.id}", f"animebot:upscale:{job.id}", f"animebot:vary:{job.id}:0",
            f"animebot:delete:{job.id}", f"animebot:info:{job.id}",
        ]
        message_id = int(final.response["id"])
        stored = fake.messages[message_id]
        assert stored["attachments"][0]["width"] == job.params.width
        assert stored["attachments"][0]["size"] == len(upload.data)

        # discord.py built a Message from the fake's answer: the delivery is recorded with its id.
        await delivered(bot)
        target = await bot.service.store.scalar("SELECT target FROM deliveries WHERE job_id = ?", (job.id,))
        assert target == f"{fake.channel_id}:{message_id}"

        # 🔄 on the result: a component interaction carrying the message.
        click = fake.click(message_id, f"animebot:reroll:{job.id}", alice)
        await fake.dispatch("INTERACTION_CREATE", click)
        callback = await fake.wait_for_request(
            request_to("POST", f"/interactions/{click['id']}/{click['token']}/callback"), timeout=TIMEOUT
        )
        assert callback.status == 200 and callback.json["type"] == 4
        first, new = await jobs_of(bot, alice_id)
        assert first.id == job.id and new.reroll_of == job.id
        assert callback.json["data"]["content"] == f"Rerolling job #{job.id} as #{new.id} (position 1)."

        original = f"/webhooks/{fake.application_id}/{click['token']}/messages/@original"
        final = await fake.wait_for_request(request_to("PATCH", original, files=True), timeout=TIMEOUT)
        assert final.status == 200
        (upload,) = final.files
        new = await bot.service.wait(new.id)
        parameters = png_parameters(upload.data, new)
        seed = seed_of(parameters)
        assert seed != 42 and new.params.seeds == (seed,)
        assert "1girl, smile" in parameters
        assert f"seed {seed}" in final.json["content"]
        assert custom_ids(final.json)[0] == f"animebot:reroll:{new.id}"
        await delivered(bot)
        target = await bot.service.store.scalar("SELECT target FROM deliveries WHERE job_id = ?", (new.id,))
        assert target == f"{fake.channel_id}:{final.response['id']}"

        # ⬆ on the first result: the choice of factor, shown only to the one who clicked ...
        click = fake.click(message_id, f"animebot:upscale:{job.id}", alice)
        await fake.dispatch("INTERACTION_CREATE", click)
        callback = await fake.wait_for_request(
            request_to("POST", f"/interactions/{click['id']}/{click['token']}/callback"), timeout=TIMEOUT
        )
        assert callback.status == 200 and callback.json["type"] == 4
        assert callback.json["data"]["flags"] & 64  # ephemeral
        assert custom_ids(callback.json["data"]) == [f"animebot:upscale:{job.id}:0:{s}" for s in ("1.5", "2")]
        menu_id = int(callback.response["resource"]["message"]["id"])

        # ... x2: a new job from the first image, announced, then its larger PNG replaces the announcement.
        click = fake.click(menu_id, f"animebot:upscale:{job.id}:0:2", alice)
        await fake.dispatch("INTERACTION_CREATE", click)
        callback = await fake.wait_for_request(
            request_to("POST", f"/interactions/{click['id']}/{click['token']}/callback"), timeout=TIMEOUT
        )
        assert callback.status == 200 and callback.json["type"] == 4
        assert not callback.json["data"].get("flags", 0) & 64  # in the channel, like a reroll
        upscale = (await jobs_of(bot, alice_id))[-1]
        assert (upscale.kind, upscale.parent_id) == ("upscale", job.id)
        assert callback.json["data"]["content"] == (
            f"Upscaling image 1 of job #{job.id} ×2 as #{upscale.id} (position 1)."
        )
        original = f"/webhooks/{fake.application_id}/{click['token']}/messages/@original"
        final = await fake.wait_for_request(request_to("PATCH", original, files=True), timeout=TIMEOUT)
        assert final.status == 200
        (upload,) = final.files
        upscale = await bot.service.wait(upscale.id)
        parameters = png_parameters(upload.data, upscale)  # its size: the job's, 128x128
        assert (upscale.params.width, upscale.params.height) == (128, 128) and seed_of(parameters) == 42
        assert custom_ids(final.json)[0] == f"animebot:reroll:{upscale.id}"
        await delivered(bot)

        # Everything went through the interactions; nothing fell back to a channel post; no payload could
        # ping anyone.
        assert not fake.find("POST", r"/channels/\d+/messages")
        assert check_payloads(fake.requests, set()) >= 4
        assert all(r.status < 400 for r in fake.requests), [(r.method, r.path, r.status) for r in fake.requests]
