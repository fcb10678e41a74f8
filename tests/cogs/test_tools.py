"""⬆ upscale and 🎲 vary under a result, through discord.py's real command tree (simcord): the choice of image
and factor, strangers refused, quotas, the new job linked to its parent and delivered, buttons after a restart."""

from __future__ import annotations

import io
from typing import Any

import discord
import pytest
import simcord
from PIL import Image

from bot.core.jobs import JobRecord
from bot.core.uploads import MAX_UPLOAD_BYTES
from bot.discord_app.client import AnimeBot
from bot.prompts.dialects import load_dialect
from bot.prompts.requests import bucket_size
from tests.bot.core.test_uploads import png_header_only
from tests.cogs.conftest import BotFactory, retire, server
from tests.cogs.test_generate import finish, jobs_of


async def all_jobs(bot: AnimeBot) -> int:
    return int(await bot.service.store.scalar("SELECT COUNT(*) FROM jobs"))


def custom_ids(message: Any) -> list[str]:
    return [child.custom_id for row in message.components for child in row.children]


async def generated(
    env: simcord.Env, bot: AnimeBot, member: simcord.MemberActor, channel: simcord.ChannelHandle, count: int = 1
) -> tuple[JobRecord, simcord.ResponseMessage]:
    result = await member.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1", count=count)
    job = (await jobs_of(bot, member.id))[0]
    job = await finish(env, bot, job.id)
    assert result.response is not None and len(result.response.attachments) == count
    return job, result.response


async def image_size(bot: AnimeBot, job_id: int, index: int = 0) -> tuple[int, int]:
    image = (await bot.service.images(job_id))[index]
    with Image.open(bot.service.image_path(image.path)) as png:
        return png.size


async def test_the_result_shows_upscale_and_vary(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        one, message = await generated(env, bot, alice, channel)
        assert custom_ids(message.message) == [
            f"animebot:reroll:{one.id}", f"animebot:upscale:{one.id}", f"animebot:vary:{one.id}:0",
            f"animebot:delete:{one.id}", f"animebot:info:{one.id}",
        ]
        two, message = await generated(env, bot, alice, channel, count=2)
        assert f"animebot:vary:{two.id}" in custom_ids(message.message)  # several images: it asks which


async def test_upscale_asks_which_image_and_factor_then_makes_a_linked_job(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel, count=2)

        refused = await bob.click(message, custom_id=f"animebot:upscale:{job.id}")
        assert refused.ephemeral and refused.response is not None and "Only the owner" in refused.response.content

        menu = await alice.click(message, custom_id=f"animebot:upscale:{job.id}")
        assert menu.ephemeral and menu.response is not None
        assert f"job #{job.id}" in menu.response.content
        assert custom_ids(menu.response.message) == [
            f"animebot:upscale:{job.id}:{i}:{s}" for i in (0, 1) for s in ("1.5", "2")
        ]
        assert await all_jobs(bot) == 1

        clicked = await alice.click(menu.response, custom_id=f"animebot:upscale:{job.id}:1:2")
        assert not clicked.ephemeral and clicked.response is not None
        assert f"Upscaling image 2 of job #{job.id} ×2" in clicked.response.content
        new = (await jobs_of(bot, alice.id))[0]
        assert (new.kind, new.parent_id) == ("upscale", job.id)
        new = await finish(env, bot, new.id)
        assert new.delivered and clicked.response.attachments
        assert clicked.response.content.endswith(f"· ⬆ of #{job.id}")  # the result says what it was made from
        assert await image_size(bot, new.id) == (128, 128)  # 64x64 x2
        parent_seed = (await bot.service.images(job.id))[1].seed
        assert new.params.seeds == (parent_seed,)


async def test_vary_of_a_single_image_runs_at_once_and_of_several_asks(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel)
        refused = await bob.click(message, custom_id=f"animebot:vary:{job.id}:0")
        assert refused.ephemeral and refused.response is not None and "Only the owner" in refused.response.content
        assert await all_jobs(bot) == 1

        clicked = await alice.click(message, custom_id=f"animebot:vary:{job.id}:0")
        assert not clicked.ephemeral and clicked.response is not None
        assert f"Varying image 1 of job #{job.id}" in clicked.response.content
        new = (await jobs_of(bot, alice.id))[0]
        assert (new.kind, new.parent_id, new.params.count) == ("vary", job.id, 1)
        assert new.params.seeds != job.params.seeds
        new = await finish(env, bot, new.id)
        assert new.delivered and await image_size(bot, new.id) == (64, 64)
        info = ephemeral_text(await alice.click(clicked.response, custom_id=f"animebot:info:{new.id}"))
        assert f"From image 1 of job #{job.id} · strength {new.params.strength}" in info

        several, message = await generated(env, bot, alice, channel, count=2)
        menu = await alice.click(message, custom_id=f"animebot:vary:{several.id}")
        assert menu.ephemeral and menu.response is not None
        assert custom_ids(menu.response.message) == [f"animebot:vary:{several.id}:{i}" for i in (0, 1)]
        clicked = await alice.click(menu.response, custom_id=f"animebot:vary:{several.id}:1")
        new = (await jobs_of(bot, alice.id))[0]
        assert new.params.source is not None and (new.parent_id, new.params.source.index) == (several.id, 1)
        await finish(env, bot, new.id)


async def test_history_shows_the_kind_and_the_parent(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        job, message = await generated(env, bot, alice, channel)
        await alice.click(message, custom_id=f"animebot:vary:{job.id}:0")
        menu = await alice.click(message, custom_id=f"animebot:upscale:{job.id}")
        assert menu.response is not None
        await alice.click(menu.response, custom_id=f"animebot:upscale:{job.id}:0:2")
        await alice.slash(channel, "generate", prompt="1girl", steps=1, image=("mine.png", png_bytes(64, 64)))
        jobs = await jobs_of(bot, alice.id)
        for new in jobs:
            await finish(env, bot, new.id)
        shown = ephemeral_text(await alice.slash(channel, "history"))
        lines = shown.splitlines()[1:]
        assert lines[0].startswith(f"#{jobs[0].id} ") and lines[0].endswith(" · from your image")
        assert lines[1].startswith(f"#{jobs[1].id} ") and lines[1].endswith(f" · ⬆ of #{job.id}")
        assert lines[2].startswith(f"#{jobs[2].id} ") and lines[2].endswith(f" · 🎲 of #{job.id}")
        assert lines[3].startswith(f"#{job.id} ") and "·" in lines[3] and " of #" not in lines[3]


async def test_quota_refuses_with_a_clear_message_and_queues_nothing(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_quota("user", f"discord:{alice.id}", "test", images_per_day=1)
        job, message = await generated(env, bot, alice, channel)
        refused = await alice.click(message, custom_id=f"animebot:vary:{job.id}:0")
        assert refused.ephemeral and refused.response is not None and "1 of your 1 images" in refused.response.content
        menu = await alice.click(message, custom_id=f"animebot:upscale:{job.id}")
        assert menu.response is not None
        refused = await alice.click(menu.response, custom_id=f"animebot:upscale:{job.id}:0:1.5")
        assert refused.ephemeral and refused.response is not None and "1 of your 1 images" in refused.response.content
        assert await all_jobs(bot) == 1


async def test_upscale_and_vary_work_after_a_restart(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice, bob) = server(env, "alice", "bob")
        job, message = await generated(env, bot, alice, channel)
        menu = await alice.click(message, custom_id=f"animebot:upscale:{job.id}")
        assert menu.response is not None

        await retire(bot)
        again = await make_bot()  # a new service and bot on the same data dir
        await env.restart_bot(again)
        refused = await bob.click(message, custom_id=f"animebot:vary:{job.id}:0")
        assert refused.ephemeral and refused.response is not None and "Only the owner" in refused.response.content
        clicked = await alice.click(menu.response, custom_id=f"animebot:upscale:{job.id}:0:1.5")  # shown before
        assert not clicked.ephemeral
        up = (await jobs_of(again, alice.id))[0]
        assert (up.kind, up.parent_id) == ("upscale", job.id)
        up = await finish(env, again, up.id)
        assert up.delivered and await image_size(again, up.id) == (96, 96)
        clicked = await alice.click(message, custom_id=f"animebot:vary:{job.id}:0")
        vary = (await jobs_of(again, alice.id))[0]
        assert (vary.kind, vary.parent_id) == ("vary", job.id)
        await finish(env, again, vary.id)


def png_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, fmt)
    return out.getvalue()


def ephemeral_text(result: Any) -> str:
    assert result.ephemeral and result.response is not None
    return str(result.response.content)


async def test_generate_from_an_uploaded_image(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        data = png_bytes(300, 440, "JPEG")
        result = await alice.slash(channel, "generate", prompt="1girl", steps=2, image=("photo.jpg", data))
        (job,) = await jobs_of(bot, alice.id)
        spec = bot.service.config.models["tiny"]
        dialect = load_dialect(spec.dialect)
        assert (job.kind, job.parent_id, job.request.source) == ("img2img", None, job.params.source)
        assert job.params.source is not None
        assert (job.params.width, job.params.height) == bucket_size(dialect.nearest_bucket(300, 440), spec)
        assert job.params.strength == dialect.tools.img2img_strength
        stored = bot.service.image_path(job.params.source.path)
        assert stored.name == f"{job.params.source.sha256}.png" and stored.parent.name == "inputs"
        with Image.open(stored) as png:
            assert (png.format, png.size) == ("PNG", (300, 440))
        job = await finish(env, bot, job.id)
        assert job.delivered and result.response is not None and result.response.attachments

        square = ("a.png", png_bytes(64, 64))
        await alice.slash(channel, "generate", prompt="1girl", steps=1, image=square, strength=0.3)
        again = (await jobs_of(bot, alice.id))[0]
        assert (again.kind, again.params.strength, again.params.width, again.params.height) == ("img2img", 0.3, 64, 64)
        await finish(env, bot, again.id)


async def test_bad_uploads_are_refused_clearly_and_queue_nothing(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")

        async def slash(**options: Any) -> str:
            return ephemeral_text(await alice.slash(channel, "generate", prompt="1girl", steps=1, **options))

        assert "not a PNG, JPEG or WebP" in await slash(image=("notes.png", b"just some text, not pixels"))
        assert "not a PNG, JPEG or WebP" in await slash(image=("anim.gif", png_bytes(32, 32, "GIF")))
        assert "too many pixels" in await slash(image=("bomb.png", png_header_only(60_000, 60_000)))
        assert "at least 16 pixels" in await slash(image=("thin.png", png_bytes(8, 200)))
        assert "applies to an image you give" in await slash(strength=0.5)
        assert "must be from 0.05 to 1.0" in await slash(image=("a.png", png_bytes(64, 64)), strength=0.01)

        async def never(self: discord.Attachment, **kwargs: Any) -> bytes:
            raise AssertionError("a file over the limit is not downloaded")

        monkeypatch.setattr(discord.Attachment, "read", never)
        huge = b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES)
        assert "images up to 10 MB" in await slash(image=("huge.png", huge))
        assert await all_jobs(bot) == 0


async def test_generate_with_the_hires_fix(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1, aspect="1:1", hires=True)
        (job,) = await jobs_of(bot, alice.id)
        tools = load_dialect(bot.service.config.models["tiny"].dialect).tools
        assert job.params.hires is not None
        assert (job.params.hires.scale, job.params.hires.strength) == (tools.hires_scale, tools.hires_strength)
        assert (job.kind, job.params.source, job.params.output_size()) == ("txt2img", None, (96, 96))
        job = await finish(env, bot, job.id)
        assert job.delivered and result.response is not None and "96x96" in result.response.content
        info = await alice.click(result.response, custom_id=f"animebot:info:{job.id}")
        shown = ephemeral_text(info)
        assert "96x96" in shown and f"Hires fix ×1.5 · strength {tools.hires_strength}" in shown
