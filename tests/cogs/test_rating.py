"""The rating check of results ([safety]) through the real command tree: every result is rated by the tiny
stand-in tagger (inference/tiny/tagger.py, read through the real tagger code path) before it is posted.

The tiny tagger rates by colour (red: explicit, white: general), so the tiny model is made to paint its
images one colour (`painted`): the worker still encodes, saves and records them, and the tagger reads the
saved PNGs."""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import simcord
from PIL import Image
from simcord.results import ResponseMessage

from bot.core.events import ImagesWithheld
from bot.core.jobs import JobRecord
from bot.discord_app.client import AnimeBot
from inference.tagger import TAGS_FILE
from inference.tiny.tagger import write_tiny_tagger
from inference.worker import GpuWorker
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_generate import finish, jobs_of, nsfw_channels
from tests.cogs.test_mentions import check_payloads, pings

RED, WHITE = (255, 0, 0), (255, 255, 255)
HOSTILE = "1girl, @everyone @here <@&123> <@456>"


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("rating") / "wd-tiny")


@pytest.fixture(scope="module")
def sensitive_tagger(tiny_tagger: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tagger with its rating rows `sensitive` and `explicit` swapped: red is rated sensitive."""
    folder = tmp_path_factory.mktemp("rating") / "wd-sensitive"
    shutil.copytree(tiny_tagger, folder)
    with (tiny_tagger / TAGS_FILE).open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    swap = {"sensitive": "explicit", "explicit": "sensitive"}
    rows = [[row[0], swap.get(row[1], row[1]), *row[2:]] for row in rows]
    with (folder / TAGS_FILE).open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return folder


def painted(monkeypatch: pytest.MonkeyPatch, color: tuple[int, int, int]) -> None:
    """The tiny model's images, each replaced by one of the same size in `color`."""
    real = GpuWorker._run_calls

    def run_calls(self: GpuWorker, *args: Any, **kwargs: Any) -> list[Image.Image]:
        return [Image.new("RGB", image.size, color) for image in real(self, *args, **kwargs)]

    monkeypatch.setattr(GpuWorker, "_run_calls", run_calls)


def rating_config(tagger: Path | str, safety: str = "") -> dict[str, str]:
    return {"config_text": f"[tagger]\nmodel = '{tagger}'\n", "safety": f"rate_results = true\n{safety}"}


async def make(make_bot: BotFactory, tagger: Path | str, safety: str = "") -> AnimeBot:
    options = rating_config(tagger, safety)
    return await make_bot(options["config_text"], safety=options["safety"])


def posted_images(env: simcord.Env, channel_id: int) -> list[Any]:
    """Every message with an attachment that the channel's members see (not an ephemeral answer to one user)."""
    return [m for m in env.backend.messages.get(channel_id, {}).values() if m.attachments and not m.is_ephemeral]


def withheld_counter(bot: AnimeBot) -> Callable[[], int]:
    """The images the ImagesWithheld events announce (what bot/metrics counts: tests/bot/test_metrics.py)."""
    heard: list[ImagesWithheld] = []
    bot.service.events.listen(lambda event: heard.append(event) if isinstance(event, ImagesWithheld) else None)
    return lambda: sum(event.count for event in heard)


async def generate(
    env: simcord.Env, bot: AnimeBot, member: simcord.MemberActor, channel: simcord.ChannelHandle, prompt: str = "1girl"
) -> tuple[JobRecord, simcord.InteractionResult]:
    result = await member.slash(channel, "generate", prompt=prompt, steps=1, aspect="1:1", count=2)
    job = (await jobs_of(bot, member.id))[0]
    return await finish(env, bot, job.id), result


async def test_explicit_result_is_withheld_in_a_normal_channel(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger)
    withheld = withheld_counter(bot)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, result = await generate(env, bot, alice, channel, HOSTILE)
        assert job.state == "done" and job.delivered and job.withheld == "explicit"
        # The public progress message says neutrally that nothing was posted here; only alice is told why.
        assert result.response is not None and not result.response.attachments and not result.response.components
        public = str(result.response.content)
        assert "not posted in this channel" in public and "explicit" not in public
        (notice,) = result.followups
        assert notice.ephemeral and "rated explicit" in notice.content and "/history" in notice.content
        assert posted_images(env, channel.id) == []
        shown = await alice.click(notice, custom_id=f"animebot:withheld:{job.id}")
        assert shown.ephemeral and shown.response is not None and len(shown.response.attachments) == 2
        assert all(a.filename.startswith("SPOILER_") for a in shown.response.attachments)
        assert posted_images(env, channel.id) == []  # ephemeral answers are not posts of the channel
        images = await bot.service.images(job.id)
        assert len(images) == 2 and all(i.rating == "explicit" and (i.rating_score or 0) > 0.5 for i in images)
        assert all(bot.service.image_path(i.path).is_file() for i in images)  # kept for the owner
        assert withheld() == 2

        history = await alice.slash(channel, "history")
        assert history.response is not None and "not posted: explicit" in str(history.response.content)
        assert check_payloads(env.http_requests, {alice.id}) >= 2
        assert all(users in ([], [alice.id]) and not roles and not everyone for _, users, roles, everyone in pings(env))


async def test_general_result_is_posted_and_its_rating_stored(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, WHITE)
    bot = await make(make_bot, tiny_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, result = await generate(env, bot, alice, channel)
        assert job.withheld is None and job.delivered
        assert result.response is not None and len(result.response.attachments) == 2
        assert not any(a.filename.startswith("SPOILER_") for a in result.response.attachments)
        assert [i.rating for i in await bot.service.images(job.id)] == ["general", "general"]


async def test_explicit_result_is_posted_in_an_age_restricted_channel_and_a_dm(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger)
    withheld = withheld_counter(bot)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        nsfw_channels(monkeypatch, {channel.id})
        job, result = await generate(env, bot, alice, channel)
        assert job.withheld is None and job.delivered
        assert result.response is not None and len(result.response.attachments) == 2
        assert [i.rating for i in await bot.service.images(job.id)] == ["explicit", "explicit"]

        dave = env.create_user("dave")
        dm = await dave.slash("generate", prompt="1girl", steps=1, aspect="1:1")
        in_dm = await finish(env, bot, (await jobs_of(bot, dave.id))[0].id)
        assert in_dm.withheld is None and dm.response is not None and dm.response.attachments
        assert withheld() == 0


@pytest.mark.parametrize(("mode", "spoilered", "kept_back"), [("spoiler", True, False), ("withhold", False, True)])
async def test_sensitive_result_is_spoilered_or_withheld(
    make_bot: BotFactory, sensitive_tagger: Path, monkeypatch: pytest.MonkeyPatch,
    mode: str, spoilered: bool, kept_back: bool,
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, sensitive_tagger, f'sensitive = "{mode}"\n')
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, result = await generate(env, bot, alice, channel)
        assert result.response is not None
        assert [i.rating for i in await bot.service.images(job.id)] == ["sensitive", "sensitive"]
        if kept_back:
            assert job.withheld == "sensitive" and not result.response.attachments
            assert posted_images(env, channel.id) == []
        else:
            assert job.withheld is None and len(result.response.attachments) == 2
            assert all(a.filename.startswith("SPOILER_") is spoilered for a in result.response.attachments)


async def test_a_tagger_failure_withholds_in_a_normal_channel_only(
    make_bot: BotFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    painted(monkeypatch, WHITE)
    bot = await make(make_bot, tmp_path / "no-tagger-here")
    withheld = withheld_counter(bot)
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        adult = guild.create_text_channel("adult")
        with caplog.at_level(logging.ERROR, logger="bot.discord_app.screening"):
            first, result = await generate(env, bot, alice, channel)
            second, _ = await generate(env, bot, alice, channel)
        assert first.withheld == "unchecked" and second.withheld == "unchecked"
        assert result.response is not None and not result.response.attachments
        assert "not posted in this channel" in str(result.response.content)
        (notice,) = result.followups
        assert notice.ephemeral and "check could not run" in notice.content
        assert posted_images(env, channel.id) == []
        assert all(i.rating is None for i in await bot.service.images(first.id))
        assert withheld() == 4
        errors = [r for r in caplog.records if r.name == "bot.discord_app.screening" and r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "no-tagger-here" in errors[0].getMessage()  # logged once

        nsfw_channels(monkeypatch, {adult.id})
        job, posted = await generate(env, bot, alice, adult)
        assert job.withheld is None and posted.response is not None and posted.response.attachments


async def test_rating_off_posts_everything(
    make_bot: BotFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make_bot(f"[tagger]\nmodel = '{tmp_path / 'none'}'\n", safety="rate_results = false\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, result = await generate(env, bot, alice, channel)
        assert job.withheld is None and result.response is not None and result.response.attachments
        assert [i.rating for i in await bot.service.images(job.id)] == [None, None]


def visible(env: simcord.Env, channel_id: int) -> list[Any]:
    """The messages of a channel that its members see (ephemeral answers left out), oldest first."""
    return [m for m in env.backend.messages.get(channel_id, {}).values() if not m.is_ephemeral]


async def generate_late(
    env: simcord.Env, bot: AnimeBot, member: simcord.MemberActor, channel: simcord.ChannelHandle
) -> tuple[JobRecord, simcord.InteractionResult]:
    """A /generate whose result comes after its interaction token died (the queue paused for 16 minutes)."""
    await bot.service.set_paused(True)
    result = await member.slash(channel, "generate", prompt=HOSTILE, steps=1, aspect="1:1", count=2)
    (job,) = await jobs_of(bot, member.id)
    await env.advance_time(16 * 60)
    await bot.service.set_paused(False)
    return await finish(env, bot, job.id), result


async def test_a_late_withheld_result_is_told_by_dm(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, result = await generate_late(env, bot, alice, channel)
        assert job.withheld == "explicit" and job.delivered and result.followups == []
        dm = env.backend.get_dm_channel(alice.id)
        (notice,) = visible(env, dm.id)
        assert "rated explicit" in notice.content and not notice.attachments
        assert result.response is not None and "queued" in result.response.content  # its token died: not edited
        assert [m.id for m in visible(env, channel.id)] == [result.response.id]  # alice was told privately
        assert posted_images(env, channel.id) == [] and pings(env) == []

        # The notice's button, in alice's DM (hers alone), shows her the images.
        shown = await alice.user.click(ResponseMessage(env, notice), custom_id=f"animebot:withheld:{job.id}")
        assert shown.response is not None and len(shown.response.attachments) == 2
        # Someone else asking for it by number learns nothing.
        shown_to_bob = await bob.slash(channel, "withheld show", job=job.id)
        assert shown_to_bob.ephemeral and shown_to_bob.response is not None
        assert not shown_to_bob.response.attachments and "no withheld result" in shown_to_bob.response.content


async def test_closed_dms_get_a_neutral_public_line_that_pings_nobody(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        dm = env.backend.get_dm_channel(alice.id)
        env.inject_error("POST", f"/channels/{dm.id}/messages", status=403, code=50007,
                         message="Cannot send messages to this user", times=None)
        job, _ = await generate_late(env, bot, alice, channel)
        assert job.withheld == "explicit" and job.delivered
        assert visible(env, dm.id) == []
        last = visible(env, channel.id)[-1]
        assert f"#{job.id}" in last.content and "not posted in this channel" in last.content
        assert "explicit" not in last.content and not last.attachments and not last.components
        assert pings(env) == [] and check_payloads(env.http_requests, {alice.id}) >= 1
        assert posted_images(env, channel.id) == []
        target = await bot.service.store.scalar("SELECT target FROM deliveries WHERE job_id = ?", (job.id,))
        assert target == f"{channel.id}:{last.id}"


@pytest.mark.parametrize("rated", [True, False])
async def test_the_tagger_is_loaded_once_at_start_and_shared(
    make_bot: BotFactory, tiny_tagger: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rated: bool
) -> None:
    """Results rated: the bot loads the tagger while it starts (a background task, the model on a thread), and
    the first rating and /describe use that one model. Not rated: nothing is loaded until /describe asks."""
    import inference.tagger as tagger_module
    from inference.tagger import shared_loader
    from tests.cogs.test_describe import png

    folder = shutil.copytree(tiny_tagger, tmp_path / "wd-fresh")  # options no other test has loaded
    loads: list[Any] = []
    real = tagger_module.load_tagger

    def counted(options: Any) -> Any:
        loads.append(options)
        return real(options)

    monkeypatch.setattr(tagger_module, "load_tagger", counted)
    painted(monkeypatch, WHITE)
    bot = await make_bot(f"[tagger]\nmodel = '{folder}'\n", safety=f"rate_results = {str(rated).lower()}\n")
    loader = shared_loader(bot.config.tagger_options)
    assert not loader.loaded and loads == []
    async with simcord.run(bot, settle_timeout=60) as env:
        assert bot.tagger_preload is not None
        await bot.tagger_preload
        assert loader.loaded is rated and len(loads) == int(rated)
        channel, (alice,) = server(env, "alice")
        job, result = await generate(env, bot, alice, channel)
        assert result.response is not None and len(result.response.attachments) == 2
        assert [i.rating for i in await bot.service.images(job.id)] == (["general"] * 2 if rated else [None] * 2)
        described = await alice.slash(channel, "describe", image=("white.png", png(WHITE)))
        assert described.response is not None and "1girl" in described.response.content
        assert loader.loaded and len(loads) == 1  # one model for the rating and /describe


async def test_a_failed_follow_up_falls_back_to_a_dm(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    painted(monkeypatch, RED)
    bot = await make(make_bot, tiny_tagger)
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        env.inject_error("POST", "/webhooks/*", status=500, times=None)  # follow-ups fail; edits still work
        job, result = await generate(env, bot, alice, channel)
        assert job.withheld == "explicit" and job.delivered and result.followups == []
        assert result.response is not None and "not posted in this channel" in result.response.content
        (notice,) = visible(env, env.backend.get_dm_channel(alice.id).id)
        assert "rated explicit" in notice.content and notice.components
