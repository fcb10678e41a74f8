"""/describe through the real command tree (simcord) with the tiny stand-in tagger (built in code, read
through the real tagger code path), and its "Generate with these tags" button."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import discord
import pytest
import simcord
from PIL import Image

from bot.discord_app.client import AnimeBot
from inference.tagger import Tagger
from inference.tiny.tagger import write_tiny_tagger
from tests.cogs.conftest import BotFactory, retire, server
from tests.cogs.test_forged import press
from tests.cogs.test_generate import finish, jobs_of
from tests.cogs.test_i18n import JA, japanese_users  # noqa: F401  (fixture)
from tests.cogs.test_mentions import check_payloads, pings
from tests.cogs.test_wire import TIMEOUT, delivered, fake_discord, online, request_to  # noqa: F401  (fixture)
from tests.fakes.discord_server import EPHEMERAL, FakeDiscord

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def tagger_config(folder: Path | str, extra: str = "") -> str:
    return f"[tagger]\nmodel = '{folder}'\n{extra}"


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


async def all_jobs(bot: AnimeBot) -> int:
    return int(await bot.service.store.scalar("SELECT COUNT(*) FROM jobs"))


def answer(result: simcord.InteractionResult) -> str:
    assert result.response is not None
    return str(result.response.content)


async def test_describe_tags_in_the_models_dialect_and_order(make_bot: BotFactory, tiny_tagger: Path) -> None:
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "describe", image=("blue.png", png(BLUE)))
        assert result.ephemeral
        text = answer(result)
        # The count tag first, then the character (Animagine's order; spaces, escaped parentheses), then
        # the general tags by score; hatsune_miku (0.6) is under the character threshold.
        assert "```\n1girl, ganyu \\(genshin impact\\), solo\n```" in text
        assert "Rating: general" in text and "hatsune" not in text
        assert await all_jobs(bot) == 0

        white = answer(await alice.slash(channel, "describe", image=("white.webp", png(WHITE, fmt="WEBP"))))
        assert "```\n1girl, smile, solo\n```" in white

        red = answer(await alice.slash(channel, "describe", image=("red.jpg", png(RED, fmt="JPEG"))))
        assert "Rating: explicit" in red and "```\n1girl, solo\n```" in red


async def test_character_threshold_from_the_config(make_bot: BotFactory, tiny_tagger: Path) -> None:
    bot = await make_bot(tagger_config(tiny_tagger, "character_threshold = 0.5\n"))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        text = answer(await alice.slash(channel, "describe", image=("white.png", png(WHITE))))
        assert "```\n1girl, hatsune miku, smile, solo\n```" in text


async def test_the_button_queues_a_generate(make_bot: BotFactory, tiny_tagger: Path) -> None:
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        described = await alice.slash(channel, "describe", image=("blue.png", png(BLUE)))
        assert described.response is not None
        custom_id = f"animebot:describe:{alice.id}"
        # Nobody else can click it (the answer is ephemeral: simcord refuses, as Discord does); a forged click
        # is test_forged_describe_button_does_nothing.
        clicked = await alice.click(described.response, custom_id=custom_id)
        assert not clicked.ephemeral
        (job,) = await jobs_of(bot, alice.id)
        assert job.request.choices.prompt == "1girl, ganyu \\(genshin impact\\), solo"
        assert job.request.model == "tiny" and job.request.nsfw_allowed is False
        assert job.channel_id == str(channel.id)
        assert "ganyu (genshin impact)" in job.params.prompt or "ganyu \\(genshin impact\\)" in job.params.prompt
        job = await finish(env, bot, job.id)
        assert job.state == "done" and job.delivered
        assert clicked.response is not None and clicked.response.attachments


async def test_the_button_goes_through_quotas(make_bot: BotFactory, tiny_tagger: Path) -> None:
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await bot.service.set_quota("user", f"discord:{alice.id}", "test", images_per_day=0, max_queued=1)
        await bot.service.set_paused(True)
        described = await alice.slash(channel, "describe", image=("white.png", png(WHITE)))
        assert described.response is not None
        first = await alice.click(described.response, custom_id=f"animebot:describe:{alice.id}")
        assert not first.ephemeral
        second = await alice.click(described.response, custom_id=f"animebot:describe:{alice.id}")
        assert second.ephemeral and "already have 1 job(s) waiting" in answer(second)
        assert await all_jobs(bot) == 1
        await bot.service.set_paused(False)
        (job,) = await jobs_of(bot, alice.id)
        await finish(env, bot, job.id)


async def test_the_button_works_after_a_restart(make_bot: BotFactory, tiny_tagger: Path) -> None:
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        described = await alice.slash(channel, "describe", image=("white.png", png(WHITE)))
        assert described.response is not None
        await retire(bot)
        again = await make_bot(tagger_config(tiny_tagger))
        await env.restart_bot(again)
        clicked = await alice.click(described.response, custom_id=f"animebot:describe:{alice.id}")
        assert not clicked.ephemeral
        (job,) = await jobs_of(again, alice.id)
        assert job.request.choices.prompt == "1girl, smile, solo"
        await finish(env, again, job.id)


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (6000, 5000)).save(out, format="PNG")  # 30 MP, a few kB
    return out.getvalue()


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (("notes.txt", b"hello, not an image"), "not an image I can read"),
        (("image.bmp", None), "not an image I can read"),
        (("cut.png", png(WHITE)[:-40]), "could not be read"),
        (("bomb.png", None), "too many pixels (at most 25,000,000)"),
        (("big.png", b"\x89PNG" + b"\0" * (2 * 1024 * 1024)), "too big (2 MB; at most 1 MB)"),
    ],
    ids=["text", "bmp", "truncated", "bomb", "too-big"],
)
async def test_bad_files_get_a_short_ephemeral_message(
    make_bot: BotFactory, tiny_tagger: Path, upload: tuple[str, bytes | None], message: str
) -> None:
    name, data = upload
    if data is None:
        if name == "bomb.png":
            data = bomb()
        else:
            out = io.BytesIO()
            Image.new("RGB", (8, 8)).save(out, format="BMP")
            data = out.getvalue()
    bot = await make_bot(tagger_config(tiny_tagger, "max_upload_mb = 1\n"))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "describe", image=(name, data))
        assert result.ephemeral and message in answer(result)
        assert "Nothing was tagged" in answer(result)
        assert await all_jobs(bot) == 0


async def test_too_big_is_refused_before_the_download(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads: list[int] = []
    real = discord.Attachment.read

    async def read(self: discord.Attachment, **kwargs: Any) -> bytes:
        downloads.append(self.size)
        return await real(self, **kwargs)

    monkeypatch.setattr(discord.Attachment, "read", read)
    bot = await make_bot(tagger_config(tiny_tagger, "max_upload_mb = 1\n"))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "describe", image=("big.png", b"\0" * (3 * 1024 * 1024)))
        assert "too big (3 MB; at most 1 MB)" in answer(result)
        assert downloads == []
        await alice.slash(channel, "describe", image=("white.png", png(WHITE)))
        assert len(downloads) == 1


async def test_no_tagger_is_a_short_message_and_logged(
    make_bot: BotFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await make_bot(tagger_config(tmp_path / "no-tagger-here"))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        result = await alice.slash(channel, "describe", image=("white.png", png(WHITE)))
        assert result.ephemeral and "tagger is not available" in answer(result)
        assert any("no-tagger-here" in r.getMessage() for r in caplog.records)


async def test_the_image_is_tagged_off_the_event_loop(
    make_bot: BotFactory, tiny_tagger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = Tagger.tag

    def recording(self: Tagger, image: Image.Image, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return real(self, image, **kwargs)

    monkeypatch.setattr(Tagger, "tag", recording)
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        await alice.slash(channel, "describe", image=("white.png", png(WHITE)))
    assert threads and all(t is not threading.main_thread() for t in threads)


async def test_japanese(make_bot: BotFactory, tiny_tagger: Path, japanese_users: set[int]) -> None:  # noqa: F811
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        japanese_users.add(alice.id)
        text = answer(await alice.slash(channel, "describe", image=("red.png", png(RED))))
        assert "レーティング: 成人向け" in text
        bad = answer(await alice.slash(channel, "describe", image=("a.txt", b"text")))
        assert "読み取れる画像ではありません" in bad
    (command,) = [c for c in await bot.tree_payload() if c["name"] == "describe"]
    assert command["name_localizations"][JA] == "タグ読み取り"
    (option,) = command["options"]
    assert option["name_localizations"][JA] == "画像" and "PNG" in option["description_localizations"][JA]


async def test_nothing_tagged_can_ping(make_bot: BotFactory, tiny_tagger: Path) -> None:
    bot = await make_bot(tagger_config(tiny_tagger))
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        described = await alice.slash(channel, "describe", image=("@everyone <@1>.png", png(WHITE)))
        assert described.response is not None
        clicked = await alice.click(described.response, custom_id=f"animebot:describe:{alice.id}")
        (job,) = await jobs_of(bot, alice.id)
        await finish(env, bot, job.id)
        assert clicked.response is not None
        assert check_payloads(env.http_requests, {alice.id}) >= 2
        assert pings(env) == []


async def test_forged_describe_button_does_nothing(make_bot: BotFactory, fake_discord: FakeDiscord) -> None:  # noqa: F811
    """Over the loopback Discord: a describe button forged under another message (a /generate result) by
    someone else is refused; by its owner, under a message with no description, it queues nothing."""
    fake = fake_discord
    bot: AnimeBot = await make_bot()
    async with online(bot, fake):
        alice, mallory = fake.add_member("alice"), fake.add_member("mallory")
        command = fake.slash("generate", alice, prompt="1girl, smile", steps=1, aspect="1:1")
        await fake.dispatch("INTERACTION_CREATE", command)
        original = f"/webhooks/{fake.application_id}/{command['token']}/messages/@original"
        final = await fake.wait_for_request(request_to("PATCH", original, files=True), timeout=TIMEOUT)
        await delivered(bot)
        message_id = int(final.response["id"])
        alice_id = int(alice["user"]["id"])

        refused = await press(fake, message_id, f"animebot:describe:{alice_id}", mallory)
        assert refused["flags"] & EPHEMERAL and "Only the person who asked" in refused["content"]
        expired = await press(fake, message_id, f"animebot:describe:{alice_id}", alice)
        assert expired["flags"] & EPHEMERAL and "cannot be read any more" in expired["content"]
        assert len(await jobs_of(bot, alice_id)) == 1
        assert await jobs_of(bot, int(mallory["user"]["id"])) == []
