"""Memory modes through the real command tree (simcord): /generate refuses at once, ephemerally, a job that
cannot fit in any memory mode under [inference] vram_limit_gb (nothing queued, nothing counted), and
/model info shows each model's memory setting, its mode and the mode's features, the VAE override and the
samplers the model card recommends that diffusers lacks."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest
import simcord

from bot.discord_app.client import AnimeBot
from bot.prompts.dialects import Dialect, load_dialect
from inference.memory import GIB
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_i18n import japanese_users  # noqa: F401  (the fixture)
from tests.cogs.test_results import generated

# By inference.memory's arithmetic, under 0.2 GiB: `tiny` (the tiny SDXL at 64x64) runs in high mode (0.13 GiB);
# `big` (the same at 1/4 scale: 256x256 images) fits in no mode (0.26 GiB at least, 0.65 in minimal mode).
LIMITED = "vram_limit_gb = 0.2\n"
MODELS = """
[models.big]
builtin = "tiny-sdxl"
size_scale = 0.25
[models.real]
family = "sdxl"
hub = "cagliostrolab/animagine-xl-4.0"
vae = "madebyollin/sdxl-vae-fp16-fix"
memory = "balanced"
"""


async def counted(bot: AnimeBot) -> tuple[int, int]:
    """Jobs in the database, and images counted against quotas."""
    store = bot.service.store
    return await store.scalar("SELECT COUNT(*) FROM jobs"), await store.scalar("SELECT COUNT(*) FROM usage")


async def test_generate_refuses_a_job_that_fits_in_no_mode(
    make_bot: BotFactory, japanese_users: set[int]  # noqa: F811
) -> None:
    bot = await make_bot(MODELS, inference=LIMITED)
    async with simcord.run(bot, settle_timeout=120) as env:
        guild = env.create_guild()
        channel, (alice, kenji) = server(env, "alice", "kenji", guild=guild)
        japanese_users.add(kenji.id)
        await bot.service.switch_model("big", "test", str(guild.id))

        refused = await alice.slash(channel, "generate", prompt="1girl, smile", aspect="1:1", count=4)
        assert refused.ephemeral and refused.response is not None
        text = refused.response.content
        needed = re.match(r"big cannot make a 256x256 image on this bot's GPU: it needs about (\d+\.\d) GiB", text)
        assert needed is not None and float(needed.group(1)) > 0.2, text
        assert "0.2 GiB is usable. Nothing was queued. Try a smaller size" in text
        refused = await kenji.slash(channel, "generate", prompt="1girl", aspect="1:1")
        assert refused.ephemeral and refused.response is not None
        assert refused.response.content.startswith("bigではこのボットのGPUで256x256の画像を作れません")
        assert await counted(bot) == (0, 0)  # nothing queued, nothing counted against a quota

        # A model that fits runs as usual under the same limit.
        other, (bob,) = server(env, "bob")
        accepted = await bob.slash(other, "generate", prompt="1girl, smile", steps=1)
        assert not accepted.ephemeral
        (job,), _ = await bot.service.history(f"discord:{bob.id}")
        assert (await bot.service.wait(job.id)).state == "done"
        await env.settle()


def with_missing_samplers(samplers: tuple[str, ...]) -> object:
    """load_dialect whose dialects carry `missing_samplers` (the fidelity branch adds the field)."""

    def load(dialect_id: str) -> Dialect:
        dialect = dataclasses.replace(load_dialect(dialect_id))
        object.__setattr__(dialect, "missing_samplers", samplers)
        return dialect

    return load


async def test_model_info_shows_the_memory_mode(
    make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch, japanese_users: set[int]  # noqa: F811
) -> None:
    bot = await make_bot(MODELS, inference=LIMITED)
    async with simcord.run(bot, settle_timeout=120) as env:
        channel, (alice, kenji) = server(env, "alice", "kenji")
        japanese_users.add(kenji.id)

        async def info(name: str, who: simcord.MemberActor = alice) -> str:
            result = await who.slash(channel, "model info", name=name)
            assert result.ephemeral and result.response is not None
            return result.response.content

        text = await info("tiny")
        assert "Memory: auto · runs in high mode (auto's choice now) · usable: 0.2 GiB" in text
        assert "Mode features: vae slicing" in text and "VAE:" not in text
        if not getattr(load_dialect("animagine-xl-4.0"), "missing_samplers", ()):
            assert "recommends" not in text

        text = await info("big")  # 256x256 fits in no mode under 0.2 GiB: auto falls to minimal
        assert "Memory: auto · runs in minimal mode (auto's choice now)" in text
        assert "Mode features: vae slicing, vae tiling, sequential cpu offload" in text

        text = await info("real")
        assert "Memory: balanced · runs in balanced mode (set in the config) · usable: 0.2 GiB" in text
        assert "Mode features: vae slicing, vae tiling, text encoders offloaded after encoding" in text
        assert "VAE: madebyollin/sdxl-vae-fp16-fix" in text

        text = await info("tiny", kenji)
        assert "メモリ: auto · 動作モード: highモード（autoが今選ぶもの） · 使用可能: 0.2 GiB" in text

        # Once loaded, the mode is the loaded model's.
        result = await alice.slash(channel, "generate", prompt="1girl", steps=1)
        assert not result.ephemeral
        (job,), _ = await bot.service.history(f"discord:{alice.id}")
        assert (await bot.service.wait(job.id)).state == "done"
        await env.settle()
        backend = bot.service.worker.cache.loaded(bot.config.models["tiny"])
        assert backend is not None
        assert f"runs in {backend.memory_mode} mode (loaded)" in await info("tiny")

        # The samplers the model card recommends that diffusers does not have.
        cog_module = sys.modules[type(bot.get_cog("Models")).__module__]  # the module load_extension ran
        monkeypatch.setattr(cog_module, "load_dialect", with_missing_samplers(("er_sde",)))
        text = await info("tiny-anima64")
        assert "The model card also recommends er_sde, which diffusers does not have; Euler is used." in text
        assert "モデルカードはer_sdeも推奨していますが" in await info("tiny-anima64", kenji)


async def test_a_reroll_that_no_longer_fits_is_refused(make_bot: BotFactory) -> None:
    """The memory usable shrinks after a job ran (another program took part of a shared card; here the limit
    is lowered in place): rerolling it with the button is refused ephemerally, and nothing is queued."""
    bot = await make_bot(MODELS)
    async with simcord.run(bot, settle_timeout=120) as env:
        guild = env.create_guild()
        channel, (alice,) = server(env, "alice", guild=guild)
        await bot.service.switch_model("big", "test", str(guild.id))
        job, message = await generated(env, bot, alice, channel)  # 256x256 on big: fine with no limit

        cache = bot.service.worker.cache
        cache.runtime = dataclasses.replace(cache.runtime, vram_limit=int(0.2 * GIB))
        clicked = await alice.click(message, custom_id=f"animebot:reroll:{job.id}")
        assert clicked.ephemeral and clicked.response is not None
        assert clicked.response.content.startswith("big cannot make a 256x256 image on this bot's GPU")
        assert await counted(bot) == (1, 1)  # the first job only
