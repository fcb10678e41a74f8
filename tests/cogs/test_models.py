"""/model list, info, switch and quota through the real command tree (simcord)."""

from __future__ import annotations

from pathlib import Path

import discord
import simcord

from bot.discord_app.client import AnimeBot
from tests.cogs.conftest import BotFactory, server
from tests.cogs.test_queue_cog import audit_actions


async def test_model_list_info_and_autocomplete(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        channel, (alice,) = server(env, "alice")

        listed = await alice.slash(channel, "model list")
        assert listed.ephemeral and listed.response is not None
        text = listed.response.content
        assert "▶ tiny · sdxl" in text and "· tiny-anima64 · anima" in text

        info = await alice.slash(channel, "model info", name="tiny-anima64")
        assert info.ephemeral and info.response is not None
        assert "Family: anima" in info.response.content and "built-in tiny model" in info.response.content
        assert "Active here: no" in info.response.content
        active = await alice.slash(channel, "model info")
        assert active.response is not None and active.response.content.startswith("tiny\n")
        unknown = await alice.slash(channel, "model info", name="nope")
        assert unknown.response is not None and unknown.ephemeral
        assert "no model named 'nope'" in unknown.response.content

        choices = await alice.autocomplete(channel, "model switch", "name", "anima")
        values = [c["value"] for c in choices]
        assert "tiny-anima64" in values and all("anima" in v for v in values) and "tiny" not in values


async def test_model_switch_and_quota_refused_for_members(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (bob,) = server(env, "bob", guild=guild)
        refused = await bob.slash(channel, "model switch", name="tiny-anima64")
        assert refused.ephemeral and refused.response is not None and "Only admins" in refused.response.content
        refused = await bob.slash(channel, "model quota", user=bob, images_per_day=0)
        assert refused.ephemeral and refused.response is not None and "Only admins" in refused.response.content
        assert await bot.service.active_model(str(guild.id)) == "tiny"
        assert await bot.service.store.scalar("SELECT COUNT(*) FROM quota_overrides") == 0
        assert await audit_actions(bot) == []


async def admin(env: simcord.Env) -> tuple[simcord.GuildHandle, simcord.ChannelHandle, simcord.MemberActor]:
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    return guild, channel, guild.add_member(env.create_user("mod"), roles=[mods])


async def test_model_switch_by_admin(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=120) as env:
        guild, channel, mod = await admin(env)
        result = await mod.slash(channel, "model switch", name="tiny-anima64")
        assert result.ephemeral and result.response is not None
        callbacks = [str(r.json) for r in env.http_requests if r.method == "POST" and "/callback" in r.path]
        assert "Loading tiny-anima64" in callbacks[-1]
        edits = [str(r.json) for r in env.http_requests if r.method == "PATCH" and "@original" in r.path]
        assert any("Loading tiny-anima64: " in e for e in edits), edits  # a loading stage was shown
        assert "tiny-anima64 is now active (was tiny)" in result.response.content
        assert await bot.service.active_model(str(guild.id)) == "tiny-anima64"
        assert await audit_actions(bot) == ["model.switch"]


async def test_model_switch_failure_keeps_the_previous_model(make_bot: BotFactory, tmp_path: Path) -> None:
    bot: AnimeBot = await make_bot(f'[models.broken]\nfamily = "sdxl"\npath = "{tmp_path / "missing"}"\n')
    async with simcord.run(bot, settle_timeout=60) as env:
        guild, channel, mod = await admin(env)
        result = await mod.slash(channel, "model switch", name="broken")
        assert result.response is not None
        text = result.response.content
        assert "Could not load broken" in text and "tiny stays active" in text
        assert await bot.service.active_model(str(guild.id)) == "tiny"
        assert await audit_actions(bot) == ["model.switch_failed"]
        listed = await mod.slash(channel, "model list")
        assert listed.response is not None and "broken · sdxl · missing" in listed.response.content


async def test_model_quota_by_bot_admin(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild = env.create_guild()
        channel, (mod, alice) = server(env, "owner", "alice", guild=guild)
        bot.config.discord.admin_user_ids.append(mod.id)  # user limits apply everywhere: bot admins only

        async def reply(**options: object) -> str:
            result = await mod.slash(channel, "model quota", **options)
            assert result.ephemeral and result.response is not None
            return result.response.content

        assert "has no quota override" in await reply(user=alice)  # shows, changes nothing
        text = await reply(user=alice, images_per_day=3)
        assert "3 images per 24 hours, unlimited jobs waiting at once, 0s between requests" in text
        text = await reply(user=alice, max_queued=1, cooldown=90)  # the images limit stays
        assert "3 images per 24 hours, 1 jobs waiting at once, 1m 30s between requests" in text
        assert text in await reply(user=alice)
        quota = await alice.slash(channel, "quota")
        assert quota.response is not None and "0 of 3 (3 left)" in quota.response.content

        assert "Removed the quota override" in await reply(user=alice, reset=True)
        assert "has no quota override" in await reply(user=alice, reset=True)
        quota = await alice.slash(channel, "quota")
        assert quota.response is not None and "unlimited" in quota.response.content
        assert await audit_actions(bot) == ["quota.set", "quota.set", "quota.clear"]

        assert "Name one user or one role" in await reply(images_per_day=1)
        assert await audit_actions(bot) == ["quota.set", "quota.set", "quota.clear"]


async def test_model_quota_for_a_role(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        guild, channel, mod = await admin(env)
        artists = guild.create_role("artists")
        carol = guild.add_member(env.create_user("carol"), roles=[artists])
        dave = guild.add_member(env.create_user("dave"))
        result = await mod.slash(channel, "model quota", role=artists, images_per_day=7)
        assert result.response is not None and f"<@&{artists.id}>" in result.response.content
        member_quota = await carol.slash(channel, "quota")
        assert member_quota.response is not None and "0 of 7 (7 left)" in member_quota.response.content
        other_quota = await dave.slash(channel, "quota")
        assert other_quota.response is not None and "unlimited" in other_quota.response.content
        both = await mod.slash(channel, "model quota", user=dave, role=artists, images_per_day=1)
        assert both.response is not None and "Name one user or one role" in both.response.content


