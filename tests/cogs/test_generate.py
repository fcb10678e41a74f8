"""/generate through the real command tree (simcord) with a real service on the tiny models."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import discord
import pytest
import simcord
from PIL import Image

from bot.core.events import Event, JobQueued
from bot.core.jobs import JobRecord
from bot.discord_app.client import AnimeBot
from bot.prompts.builder import PromptChoices
from bot.prompts.policy import Verdict
from bot.prompts.requests import GenerationRequest
from tests.cogs.conftest import BotFactory, server

STEPS = 2


async def jobs_of(bot: AnimeBot, user_id: int) -> list[JobRecord]:
    jobs, _ = await bot.service.history(f"discord:{user_id}", 0, 50)
    return jobs


async def finish(env: simcord.Env, bot: AnimeBot, job_id: int) -> JobRecord:
    await bot.service.wait(job_id)
    await env.settle()
    job = await bot.service.job(job_id)
    assert job is not None
    return job


@asynccontextmanager
async def announced(bot: AnimeBot, job_id: int, position: int) -> AsyncIterator[None]:
    """Wait, after the block, until the queue has announced `position` for the job (listening from
    before the block, so the announcement cannot come unseen)."""
    heard = asyncio.get_running_loop().create_future()

    def on_event(event: Event) -> None:
        if event == JobQueued(job_id, position) and not heard.done():
            heard.set_result(None)

    unlisten = bot.service.events.listen(on_event)
    try:
        yield
        await asyncio.wait_for(heard, 60)
    finally:
        unlisten()


def requests(env: simcord.Env, method: str, fragment: str) -> list[Any]:
    return [r for r in env.http_requests if r.method == method and fragment in r.path]


async def test_generate_end_to_end(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        bot.deliveries.progress_interval = 0.0  # show every step
        channel, (alice,) = server(env, "alice")

        result = await alice.slash(channel, "generate", prompt="1girl, smile", steps=STEPS, seed=42, aspect="1:1")
        assert result.acknowledged and not result.ephemeral
        (job,) = await jobs_of(bot, alice.id)
        first = requests(env, "POST", "/callback")[0]
        assert "queued" in str(first.json) and f"#{job.id}" in str(first.json)

        job = await finish(env, bot, job.id)
        assert job.state == "done" and job.delivered
        edits = [str(r.json) for r in requests(env, "PATCH", "@original")]
        assert any(f"step {STEPS}/{STEPS}" in e for e in edits), edits
        response = result.response
        assert response is not None
        assert "seed 42" in response.content and "tiny" in response.content and "64x64" in response.content
        (attachment,) = response.attachments
        assert attachment.filename.endswith(".png")
        data = await attachment.read()
        image = Image.open(io.BytesIO(data))
        assert image.size == (64, 64)
        assert "Seed: 42" in image.info["parameters"] and "Steps: 2" in image.info["parameters"]
        ids = [c["custom_id"] for row in response.components for c in row["components"]]
        assert ids == [
            f"animebot:reroll:{job.id}", f"animebot:upscale:{job.id}", f"animebot:vary:{job.id}:0",
            f"animebot:delete:{job.id}", f"animebot:info:{job.id}",
        ]
        target = await bot.service.store.scalar("SELECT target FROM deliveries WHERE job_id = ?", (job.id,))
        assert target == f"{channel.id}:{response.id}"


async def test_autocomplete_caps_and_model_dialect(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        for option in ("quality", "year", "rating", "artist", "aspect"):
            choices = await alice.autocomplete(channel, "generate", option, "")
            assert 1 <= len(choices) <= 25, option
            assert all(1 <= len(c["name"]) <= 100 and 1 <= len(c["value"]) <= 100 for c in choices), option
        years = await alice.autocomplete(channel, "generate", "year", "")
        assert len(years) == 25  # periods + every year: capped
        artists = await alice.autocomplete(channel, "generate", "artist", "long_artist")
        assert artists and all(len(c["name"]) <= 100 for c in artists)
        sdxl = await alice.autocomplete(channel, "generate", "artist", "artist_0")
        assert sdxl[0]["name"] == "artist 00" and sdxl[0]["value"] == "artist_00"

        await bot.service.switch_model("tiny-anima64", "test", str(guild.id))
        anima = await alice.autocomplete(channel, "generate", "artist", "artist_0")
        assert anima[0]["name"] == "@artist 00" and anima[0]["value"] == "artist_00"
        several = await alice.autocomplete(channel, "generate", "artist", "artist_00, artist_1")
        assert several[0]["name"] == "artist_00, @artist 10"
        aspects = await alice.autocomplete(channel, "generate", "aspect", "")
        assert {c["value"] for c in aspects} >= {"1:1"} and "square" in aspects[0]["name"]


def nsfw_channels(monkeypatch: pytest.MonkeyPatch, ids: set[int]) -> None:
    """simcord has no age-restricted flag on channels: mark these channel ids as such."""
    monkeypatch.setattr(discord.TextChannel, "is_nsfw", lambda self: self.id in ids)


async def test_nsfw_rating_only_in_age_restricted_channels(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        general = guild.create_text_channel("general")
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})
        user = env.create_user("alice")
        alice = guild.add_member(user)

        offered = {c["value"] for c in await alice.autocomplete(general, "generate", "rating", "")}
        assert offered == {"general", "sensitive"}
        offered = {c["value"] for c in await alice.autocomplete(adult, "generate", "rating", "")}
        assert offered == {"general", "sensitive", "questionable", "explicit"}

        refused = await alice.slash(general, "generate", prompt="1girl", rating="explicit", steps=1)
        assert refused.response is not None and refused.ephemeral and "age-restricted" in refused.response.content
        assert await jobs_of(bot, alice.id) == []
        refused = await alice.slash(general, "generate", prompt="1girl, explicit", steps=1)  # typed, not chosen
        assert refused.response is not None and refused.ephemeral and "age-restricted" in refused.response.content
        refused = await user.slash("generate", prompt="1girl", rating="questionable", steps=1)  # a DM
        assert refused.ephemeral and "age-restricted" in refused.response.content
        assert await jobs_of(bot, alice.id) == []

        allowed = await alice.slash(adult, "generate", prompt="1girl", rating="explicit", steps=1)
        assert not allowed.ephemeral
        safe = await alice.slash(general, "generate", prompt="1girl", rating="general", steps=1)
        assert not safe.ephemeral
        new, old = await jobs_of(bot, alice.id)  # newest first
        assert old.request.choices.sfw is False and old.request.choices.rating == "explicit"
        assert new.request.choices.sfw is True
        for job in (old, new):
            await finish(env, bot, job.id)


async def test_banned_word_and_bad_input_change_nothing(make_bot: BotFactory) -> None:
    bot = await make_bot('[discord]\nbanned_words = ["forbidden"]\n')
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"prompt": "1girl, Forbidden thing"}, "not allowed"),
            ({"prompt": "1girl", "steps": 500}, "steps must be from 1 to 150"),
            ({"prompt": "1girl", "quality": "bogus"}, "no quality 'bogus'"),
            ({"prompt": "1girl", "aspect": "wide"}, "Aspect 'wide'"),
        ]
        for options, text in cases:
            result = await alice.slash(channel, "generate", **options)
            assert result.ephemeral, options
            assert result.response is not None and text in result.response.content
        assert await jobs_of(bot, alice.id) == []
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_sensitive_results_are_spoilers_when_configured(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make_bot("[discord]\nspoiler_sensitive = true\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})
        alice = guild.add_member(env.create_user("alice"))
        cases = (({"rating": "explicit"}, True), ({"rating": "general"}, False), ({"prompt": "1girl, explicit"}, True))
        for options, spoiler in cases:
            options = {"prompt": "1girl", **options}
            result = await alice.slash(adult, "generate", steps=1, aspect="1:1", **options)
            job = (await jobs_of(bot, alice.id))[0]
            assert job.request.choices.sfw is (options.get("rating") == "general")  # SFW even here
            await finish(env, bot, job.id)
            assert result.response is not None
            (attachment,) = result.response.attachments
            assert attachment.filename.startswith("SPOILER_") is spoiler


async def test_unexpected_error_is_logged_and_answered_briefly(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await make_bot()

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database on fire")

    async with simcord.run(bot, settle_timeout=60) as env:
        monkeypatch.setattr(bot.service, "submit", broken)
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "generate", prompt="1girl")
        assert result.ephemeral and result.response is not None
        assert "Something went wrong" in result.response.content and "fire" not in result.response.content
        assert "database on fire" in caplog.text


async def test_ack_shows_the_queue_position_and_dm_works(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("general")
        user = env.create_user("alice")
        alice = guild.add_member(user)
        await bot.service.set_paused(True)
        first = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        second = await user.slash("generate", prompt="1boy", steps=1, aspect="1:1")  # in a DM
        callbacks = [str(r.json) for r in requests(env, "POST", "/callback")]
        assert "(position 1)" in callbacks[0] and "(position 2)" in callbacks[1]
        await bot.service.set_paused(False)
        for job in await jobs_of(bot, alice.id):
            await finish(env, bot, job.id)
        for result in (first, second):
            assert result.response is not None and result.response.attachments


async def test_queue_position_edits_are_throttled_but_the_start_is_shown_at_once(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_paused(True)
        request = GenerationRequest("tiny", PromptChoices("1girl"), steps=1, aspect="1:1")
        ahead = [await bot.service.submit(request, f"discord:{9000 + i}") for i in range(3)]
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        assert job.id == ahead[-1].id + 1 and await bot.service.position(job.id) == 4
        assert "(position 4)" in str(requests(env, "POST", "/callback")[0].json)  # the acknowledgement
        bot.deliveries.queue_interval = 3600.0

        def edits() -> list[str]:
            return [str(r.json) for r in requests(env, "PATCH", "@original")]

        for position, other in ((3, ahead[0]), (2, ahead[1])):
            async with announced(bot, job.id, position):  # the queue announces positions in the background
                await bot.service.cancel(other.id, other.owner_id)
            await env.settle()
        assert [e for e in edits() if "position" in e] == [e for e in edits() if "(position 3)" in e]
        assert len(edits()) == 1  # position 3 shown; position 2 came within the interval: it waits for it
        await bot.service.cancel(ahead[2].id, ahead[2].owner_id)
        await bot.service.set_paused(False)
        await finish(env, bot, job.id)
        assert any("generating with tiny" in e for e in edits()[1:])  # the start is shown despite the interval
        assert not any("(position 2)" in e or "(position 1)" in e for e in edits())  # never after the start
        assert result.response is not None and result.response.attachments


# Spellings of an nsfw rating, per option, that must never queue a job in a normal channel (issue 8, bug 6:
# 19 of 39 such tries made images).
BYPASSES: list[dict[str, Any]] = [
    *(
        {"prompt": f"1girl, {spelling}"}
        for spelling in (
            "explicit", "explicit.", "explicit!", "rating:explicit", "rating_explicit", "rating:e", "artist:explicit",
            "ｅｘｐｌｉｃｉｔ", "ＮＳＦＷ", "ex\u200dplicit", "ex\u00adplicit", "ex\u200bplicit", "explıcit",
            "ехрliсit", "ᴇxᴘʟɪᴄɪᴛ", "(explicit:1.3)", "[nsfw]", "e x p l i c i t", "NSFW", "questionable",
            "éxplicit", "\u202eexplicit\u202c",
        )
    ),
    *(
        {"prompt": "1girl", "artist": artist}
        for artist in ("explicit", "nsfw", "rating:explicit", "ｅｘｐｌｉｃｉｔ", "@nsfw")
    ),
    *(
        {"prompt": "1girl", "rating": rating}
        for rating in ("explicit", "Explicit", "ｅｘｐｌｉｃｉｔ", "ex\u00adplicit", "e", "nsfw", "Q")
    ),
    {"prompt": "1girl", "negative": "lowres, (nsfw:-1.5)"},  # a negative weight in the negative asks for it
]


async def test_no_spelling_of_an_nsfw_rating_queues_in_a_normal_channel(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)  # a leak would stay queued, and is counted below
        channel, (alice,) = server(env, "alice")
        leaked = []
        for options in BYPASSES:
            result = await alice.slash(channel, "generate", steps=1, **options)
            content = result.response.content if result.response is not None else ""
            if not (result.ephemeral and "age-restricted" in content and "Nothing was queued" in content):
                leaked.append(options)
        assert leaked == []
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_banned_words_in_any_spelling_and_any_field(make_bot: BotFactory) -> None:
    bot = await make_bot('[discord]\nbanned_words = ["forbidden"]\n')
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        tries = [
            {"prompt": "1girl, ｆｏｒｂｉｄｄｅｎ"},
            {"prompt": "1girl, forbi\u200bdden"},
            {"prompt": "1girl, forbidden_thing"},
            {"prompt": "1girl, FORBIDDEN!"},
            {"prompt": "1girl", "artist": "forbidden"},
            {"prompt": "1girl", "negative": "forbi\u00addden"},
        ]
        for options in tries:
            result = await alice.slash(channel, "generate", steps=1, **options)
            assert result.ephemeral and result.response is not None, options
            assert "not allowed here ('forbidden')" in result.response.content, options
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_empty_and_oversized_options_are_refused(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"prompt": " , , "}, "The prompt is empty."),
            ({"prompt": "@"}, "The prompt is empty."),
            ({"prompt": "\u200b\u200d"}, "The prompt is empty."),
            ({"prompt": "[@], @@, (  )"}, "The prompt is empty."),
            ({"prompt": "1girl", "negative": "x" * 6000}, "The negative option is too long (6000 characters"),
            ({"prompt": "1girl", "artist": "a" * 101}, "Artist names must be 1 to 100 characters."),
            ({"prompt": "1girl", "aspect": "9" * 400 + ":1"}, "The aspect option is too long (402 characters"),
            ({"prompt": "1girl", "quality": "q" * 500}, "The quality option is too long"),
        ]
        for options, text in cases:
            result = await alice.slash(channel, "generate", **options)
            assert result.ephemeral and result.response is not None, options
            assert text in result.response.content, (options, result.response.content)
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM jobs") == 0


async def test_spoilers_follow_the_stored_verdict(make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery reads the verdict stored at submit (it never rebuilds the prompt); a job stored before
    verdicts existed (NULL) is read by the policy, so `rating:explicit` typed in the prompt is spoilered too."""
    bot = await make_bot("[discord]\nspoiler_sensitive = true\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})
        alice = guild.add_member(env.create_user("alice"))
        await bot.service.queue.set_paused(True)
        stored = await alice.slash(adult, "generate", prompt="1girl, rating:explicit", steps=1, aspect="1:1")
        old = await alice.slash(adult, "generate", prompt="1girl, ｅｘ\u200dplicit", steps=1, aspect="1:1")
        overridden = await alice.slash(adult, "generate", prompt="1girl, explicit", steps=1, aspect="1:1")
        first, second, third = sorted(job.id for job in await jobs_of(bot, alice.id))
        job = await bot.service.queue.jobs.get(first)
        assert job is not None and job.verdict is not None and job.verdict.ratings == ("explicit",)
        await bot.service.store.execute("UPDATE jobs SET verdict = NULL WHERE id = ?", (second,))
        sfw = Verdict((), False, True).to_json()  # what the policy would have said of a SFW prompt
        await bot.service.store.execute("UPDATE jobs SET verdict = ? WHERE id = ?", (sfw, third))
        await bot.service.queue.set_paused(False)
        for job_id in (first, second, third):
            await finish(env, bot, job_id)
        spoilers = []
        for result in (stored, old, overridden):
            assert result.response is not None
            (attachment,) = result.response.attachments
            spoilers.append(attachment.filename.startswith("SPOILER_"))
        assert spoilers == [True, True, False]


async def test_control_characters_never_reach_the_png(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(
            channel, "generate", prompt="1girl\x00, smile\x07\x1b[31m, ｈａｔ\u200b", negative="odd\x00hands",
            steps=1, seed=3, aspect="1:1", quality="none",
        )
        (job,) = await jobs_of(bot, alice.id)
        await finish(env, bot, job.id)
        assert result.response is not None
        (attachment,) = result.response.attachments
        parameters = Image.open(io.BytesIO(await attachment.read())).info["parameters"]
        prompt, negative, _ = parameters.split("\n")  # the A1111 layout: no line break but its own two
        assert not any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 or ch == "\u200b" for ch in prompt + negative)
        assert prompt == "1girl, smile [31m, hat" and ", odd hands, " in negative


async def test_the_acknowledgement_echoes_the_normalized_prompt(make_bot: BotFactory) -> None:
    """What the queued message shows is the text the policy judged and the model gets, not the raw input."""
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await alice.slash(channel, "generate", prompt="ｈａｔ\u200b, 1gi\u00adrl\x07", steps=1, aspect="1:1")
        (job,) = await jobs_of(bot, alice.id)
        first = str(requests(env, "POST", "/callback")[0].json)
        assert f"#{job.id} queued (position 1): hat, 1girl" in first, first
        await finish(env, bot, job.id)


async def test_a_failure_after_the_submit_still_delivers_the_queued_job(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job is queued, then reading its position fails (a bug, a damaged row): the user gets the short
    error, and the queued job is still followed, its result posted in the channel (not left for a restart)."""
    bot = await make_bot()

    async def broken(job_id: int) -> int | None:
        raise RuntimeError("position on fire")

    async with simcord.run(bot, settle_timeout=60) as env:
        monkeypatch.setattr(bot.service, "position", broken)
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert result.ephemeral and result.response is not None
        assert "Something went wrong" in result.response.content
        (job,) = await jobs_of(bot, alice.id)
        job = await finish(env, bot, job.id)
        await asyncio.gather(*bot.deliveries.tasks)
        await env.settle()
        posts = [m for m in channel.history() if m.attachments and f"<@{alice.id}>" in m.content]
        assert len(posts) == 1 and job.state.value == "done"
        assert (await bot.service.job(job.id)).delivered  # type: ignore[union-attr]
