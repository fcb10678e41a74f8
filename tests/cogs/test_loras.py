"""LoRAs through the real command tree (simcord): /generate's lora option and its autocomplete, <lora:name:w> in the
prompt, /lora list and /lora reload, with LoRA files made in code in the bot's [loras] folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import simcord

from bot.core.jobs import StoredParams
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_generate import finish, jobs_of, nsfw_channels
from tests.cogs.test_queue_cog import audit_actions

STEPS = 1


@pytest.fixture
def loras_dir(tmp_path: Path) -> Path:
    """The default [loras] folder of the test bot (data/loras), with three SDXL LoRAs and one Anima LoRA."""
    from inference.tiny.lora import tiny_anima_lora, tiny_sdxl_lora, write_lora

    folder = tmp_path / "data" / "loras"
    write_lora(folder / "pixel.safetensors", tiny_sdxl_lora("kohya", seed=1))
    (folder / "pixel.toml").write_text(
        'name = "Pixel Art"\nweight = 0.7\ntriggers = ["pixel art"]\ntrigger_position = "start"\n', encoding="utf-8"
    )
    write_lora(folder / "ink.safetensors", tiny_sdxl_lora("diffusers", seed=2))
    write_lora(folder / "spicy.safetensors", tiny_sdxl_lora("kohya", seed=3, text_encoder=False))
    (folder / "spicy.toml").write_text("nsfw = true\n", encoding="utf-8")
    write_lora(folder / "flat.safetensors", tiny_anima_lora("comfyui"))
    return folder


async def test_generate_with_loras_records_them_and_refuses_bad_ones(
    make_bot: BotFactory, loras_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make_bot()
    pixel = bot.service.loras.get("pixel art")
    ink = bot.service.loras.get("ink")
    assert pixel is not None and ink is not None
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})

        result = await alice.slash(
            channel, "generate", prompt="1girl, <lora:ink:0.5>, smile", lora="pixel art", steps=STEPS, seed=3
        )
        assert result.acknowledged and not result.ephemeral
        (job,) = await jobs_of(bot, alice.id)
        assert [(lora.name, lora.weight, lora.sha256) for lora in job.params.loras] == [
            ("Pixel Art", 0.7, pixel.sha256),
            ("ink", 0.5, ink.sha256),
        ]
        assert job.params.loras[0].short_hash == pixel.short_hash
        assert "pixel art" in job.params.prompt and "<lora" not in job.params.prompt
        assert job.request.lora == "Pixel Art:0.7, ink:0.5" and job.request.choices.prompt == "1girl, smile"
        stored = await bot.service.store.scalar("SELECT params FROM jobs WHERE id = ?", (job.id,))
        assert StoredParams.model_validate_json(str(stored)).to_params().loras == job.params.loras
        assert (await finish(env, bot, job.id)).state == "done"

        cases = [
            ({"lora": "nope"}, "There is no LoRA 'nope' for"),
            ({"lora": "flat"}, "made for anima models"),
            ({"lora": "ink:9"}, "must be from -2.0 to 2.0"),
            ({"lora": "ink, pixel art, x"}, "There is no LoRA 'x'"),
            ({"lora": "spicy"}, "only allowed in age-restricted channels"),
            ({"lora": "ink:heavy"}, "name or name:weight"),
        ]
        for options, text in cases:
            refused = await alice.slash(channel, "generate", prompt="1girl", steps=STEPS, **options)
            assert refused.ephemeral and refused.response is not None, options
            assert text in refused.response.content, (options, refused.response.content)
        # Three different ones are allowed (ink named twice counts once, where it was last named); in an
        # age-restricted channel the nsfw one too. The refusals above queued nothing.
        queued = await alice.slash(adult, "generate", prompt="1girl", steps=STEPS, lora="ink, pixel art, spicy, ink")
        assert queued.acknowledged and not queued.ephemeral
        assert len(await jobs_of(bot, alice.id)) == 2
        allowed = (await jobs_of(bot, alice.id))[0]
        assert [lora.name for lora in allowed.params.loras] == ["Pixel Art", "spicy", "ink"]
        await finish(env, bot, allowed.id)


async def test_too_many_loras_are_refused(make_bot: BotFactory, loras_dir: Path) -> None:
    bot = await make_bot("[loras]\nmax_per_job = 1\n")
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")
        refused = await alice.slash(channel, "generate", prompt="1girl <lora:ink>", lora="pixel art", steps=STEPS)
        assert refused.ephemeral and refused.response is not None
        assert "At most 1 LoRAs per job (you asked for 2)" in refused.response.content
        assert await jobs_of(bot, alice.id) == []


async def test_lora_autocomplete_follows_the_model_and_the_channel(
    make_bot: BotFactory, loras_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})

        offered = await alice.autocomplete(channel, "generate", "lora", "")
        assert [c["value"] for c in offered] == ["ink", "Pixel Art"]  # no Anima LoRA, no nsfw one here
        assert offered[1]["name"] == "Pixel Art · 0.7 · pixel art"
        adult_offer = await alice.autocomplete(adult, "generate", "lora", "")
        assert [c["value"] for c in adult_offer] == ["ink", "Pixel Art", "spicy"]
        more = await alice.autocomplete(adult, "generate", "lora", "ink:0.5, P")
        assert [c["value"] for c in more] == ["ink:0.5, Pixel Art", "ink:0.5, spicy"]  # ink is named already

        await bot.service.switch_model("tiny-anima64", "test", str(guild.id))
        anima = await alice.autocomplete(channel, "generate", "lora", "")
        assert [c["value"] for c in anima] == ["flat"]


async def test_lora_list_and_reload(make_bot: BotFactory, loras_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.tiny.lora import tiny_sdxl_lora, write_lora

    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (owner, bob) = server(env, "owner", "bob", guild=guild)
        adult = guild.create_text_channel("adult")
        nsfw_channels(monkeypatch, {adult.id})
        bot.config.discord.admin_user_ids.append(owner.id)

        listed = await bob.slash(channel, "lora list")
        assert listed.ephemeral and listed.response is not None
        text = listed.response.content
        assert text.startswith("LoRAs for tiny (2):")
        assert "**Pixel Art** · weight 0.7 · triggers: pixel art" in text and "**ink** · weight 1" in text
        assert "spicy" not in text and "flat" not in text
        adult_list = await bob.slash(adult, "lora list")
        assert adult_list.response is not None and "**spicy** · weight 1 · nsfw" in adult_list.response.content

        write_lora(loras_dir / "new.safetensors", tiny_sdxl_lora("kohya", seed=9))
        (loras_dir / "broken.safetensors").write_bytes(b"not a safetensors file")
        refused = await bob.slash(channel, "lora reload")
        assert refused.ephemeral and refused.response is not None and "Only admins" in refused.response.content
        assert bot.service.loras.get("new") is None
        assert await audit_actions(bot) == []

        reloaded = await owner.slash(channel, "lora reload")
        assert reloaded.ephemeral and reloaded.response is not None
        assert "reloaded: 5 LoRA(s), 1 file(s) left out" in reloaded.response.content
        assert "broken.safetensors: not a safetensors file" in reloaded.response.content
        assert bot.service.loras.get("new") is not None
        assert await audit_actions(bot) == ["lora.reload"]
        listed = await bob.slash(channel, "lora list")
        assert listed.response is not None and "**new**" in listed.response.content

        await bot.service.switch_model("tiny-anima64", "test", str(guild.id))
        anima = await bob.slash(channel, "lora list")
        assert anima.response is not None
        assert anima.response.content == "LoRAs for tiny-anima64 (1):\n**flat** · weight 1"


async def test_lora_list_when_there_are_none(make_bot: BotFactory, tmp_path: Path) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (bob,) = server(env, "bob")
        listed = await bob.slash(channel, "lora list")
        assert listed.response is not None and listed.response.content == "There are no LoRAs for tiny."
        refused = await bob.slash(channel, "generate", prompt="1girl", lora="ink", steps=STEPS)
        assert refused.response is not None and "There is no LoRA 'ink' for" in refused.response.content


async def test_the_library_is_read_off_the_event_loop(
    make_bot: BotFactory, loras_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from inference import loras

    bot = await make_bot()
    threads: list[threading.Thread] = []
    real_scan = loras.LoraLibrary.scan.__func__  # type: ignore[attr-defined]
    real_hashes = loras.HashCache.__init__

    def scan(cls: type[loras.LoraLibrary], *args: object) -> loras.LoraLibrary:
        threads.append(threading.current_thread())
        return real_scan(cls, *args)

    def cache(self: loras.HashCache, path: Path | None) -> None:
        threads.append(threading.current_thread())
        real_hashes(self, path)

    monkeypatch.setattr(loras.LoraLibrary, "scan", classmethod(scan))
    monkeypatch.setattr(loras.HashCache, "__init__", cache)
    library = await bot.service.reload_loras()
    assert len(library.entries) == 4
    assert len(threads) == 2 and threading.main_thread() not in threads
