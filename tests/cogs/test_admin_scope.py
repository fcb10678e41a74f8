"""Admin rights are per server (issue 8, bug 14), through the real command tree with two servers: Manage
Server in server A lets a member switch A's model, set limits for A's roles and cancel jobs asked in A, and
nothing else; the global queue, the global default model, user limits, other servers' jobs and quota
exemption need a configured bot admin. Every refusal is the ephemeral admin message (or, for someone
else's job, "not yours"), and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass

import discord
import simcord

from bot.discord_app.client import AnimeBot
from tests.cogs.conftest import BotFactory
from tests.cogs.test_generate import jobs_of
from tests.cogs.test_queue_cog import audit_actions


@dataclass
class Servers:
    a: simcord.GuildHandle
    b: simcord.GuildHandle
    channel_a: simcord.ChannelHandle
    channel_b: simcord.ChannelHandle
    mod_a: simcord.MemberActor  # Manage Server in A
    mod_b: simcord.MemberActor  # Manage Server in B
    alice: simcord.MemberActor  # a member of A
    bob: simcord.MemberActor  # a member of B
    owner: simcord.MemberActor  # the configured bot admin, a plain member of B


def two_servers(env: simcord.Env, bot: AnimeBot) -> Servers:
    a, b = env.create_guild(), env.create_guild()
    channel_a, channel_b = a.create_text_channel("general"), b.create_text_channel("general")
    mods_a = a.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    mods_b = b.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    servers = Servers(
        a,
        b,
        channel_a,
        channel_b,
        mod_a=a.add_member(env.create_user("mod-a"), roles=[mods_a]),
        mod_b=b.add_member(env.create_user("mod-b"), roles=[mods_b]),
        alice=a.add_member(env.create_user("alice")),
        bob=b.add_member(env.create_user("bob")),
        owner=b.add_member(env.create_user("owner")),
    )
    bot.config.discord.admin_user_ids.append(servers.owner.id)
    return servers


async def refused(member: simcord.MemberActor, channel: simcord.ChannelHandle, command: str, **options: object) -> str:
    result = await member.slash(channel, command, **options)
    assert result.ephemeral and result.response is not None
    return result.response.content


async def overrides(bot: AnimeBot) -> int:
    return int(await bot.service.store.scalar("SELECT COUNT(*) FROM quota_overrides"))


async def test_the_global_queue_needs_a_bot_admin(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        await s.alice.slash(s.channel_a, "generate", prompt="1girl", steps=1, aspect="1:1")
        await bot.service.set_paused(True)
        await s.bob.slash(s.channel_b, "generate", prompt="1girl", steps=1, aspect="1:1")
        waiting = await bot.service.queue_length()
        for action in ("pause", "resume", "clear"):
            for mod, channel in ((s.mod_a, s.channel_a), (s.mod_b, s.channel_b)):
                assert "Only admins" in await refused(mod, channel, "queue", action=action)
        assert await bot.service.paused() and await bot.service.queue_length() == waiting >= 1
        assert await audit_actions(bot) == []

        resumed = await s.owner.slash(s.channel_b, "queue", action="resume")
        assert resumed.response is not None and "resumed" in resumed.response.content
        assert not await bot.service.paused() and await audit_actions(bot) == ["queue.resume"]


async def test_a_configured_admin_role_makes_a_bot_admin(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        ops = s.b.create_role("bot-ops")
        carol = s.b.add_member(env.create_user("carol"), roles=[ops])
        assert "Only admins" in await refused(carol, s.channel_b, "queue", action="pause")
        bot.config.discord.admin_role_ids.append(ops.id)
        paused = await carol.slash(s.channel_b, "queue", action="pause")
        assert paused.response is not None and "Queue paused" in paused.response.content
        assert await bot.service.paused()


async def test_server_admins_cancel_only_their_servers_jobs(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        await bot.service.set_paused(True)
        await s.alice.slash(s.channel_a, "generate", prompt="1girl", steps=1, aspect="1:1")
        await s.bob.slash(s.channel_b, "generate", prompt="1girl", steps=1, aspect="1:1")
        (in_a,) = await jobs_of(bot, s.alice.id)
        (in_b,) = await jobs_of(bot, s.bob.id)

        # mod-a (Manage Server in A only) cannot cancel a job asked in B; nor mod-b one asked in A.
        assert "not yours" in await refused(s.mod_a, s.channel_a, "queue", action="cancel", job=in_b.id)
        assert "not yours" in await refused(s.mod_b, s.channel_b, "queue", action="cancel", job=in_a.id)
        assert [j.state for j in (await jobs_of(bot, s.alice.id)) + (await jobs_of(bot, s.bob.id))] == [
            "queued",
            "queued",
        ]
        assert await audit_actions(bot) == []

        # Each cancels the one asked in their own server; the bot admin could cancel either.
        assert "cancelled" in await refused(s.mod_a, s.channel_a, "queue", action="cancel", job=in_a.id)
        assert "cancelled" in await refused(s.owner, s.channel_b, "queue", action="cancel", job=in_b.id)
        assert [j.state for j in (await jobs_of(bot, s.alice.id)) + (await jobs_of(bot, s.bob.id))] == [
            "cancelled",
            "cancelled",
        ]
        assert await audit_actions(bot) == ["queue.cancel", "queue.cancel"]


async def test_model_switch_per_server_and_the_global_default(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=120) as env:
        s = two_servers(env, bot)
        a, b = str(s.a.id), str(s.b.id)
        assert "Only admins" in await refused(s.alice, s.channel_a, "model switch", name="tiny-anima64")
        assert "Only admins" in await refused(
            s.mod_a, s.channel_a, "model switch", name="tiny-anima64", everywhere=True
        )
        dm = await env.create_user("stranger").slash("model switch", name="tiny-anima64")  # a DM: global
        assert dm.ephemeral and dm.response is not None and "Only admins" in dm.response.content
        assert (await bot.service.active_model(a), await bot.service.active_model(b)) == ("tiny", "tiny")
        assert await audit_actions(bot) == []

        switched = await s.mod_a.slash(s.channel_a, "model switch", name="tiny-anima64")
        assert switched.response is not None and "tiny-anima64 is now active" in switched.response.content
        assert await bot.service.active_model(a) == "tiny-anima64"
        assert await bot.service.active_model(b) == "tiny" and await bot.service.active_model(None) == "tiny"

        # The bot admin sets the global default: B (no model of its own) follows it, A keeps its own.
        await s.owner.slash(s.channel_b, "model switch", name="tiny-anima64", everywhere=True)
        assert await bot.service.active_model(None) == "tiny-anima64"
        assert await bot.service.active_model(b) == "tiny-anima64"
        await s.mod_a.slash(s.channel_a, "model switch", name="tiny")
        assert await bot.service.active_model(a) == "tiny" and await bot.service.active_model(b) == "tiny-anima64"
        assert await audit_actions(bot) == ["model.switch", "model.switch", "model.switch"]


async def test_quota_overrides_users_global_roles_per_server(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        artists_a = s.a.create_role("artists")
        carol = s.a.add_member(env.create_user("carol"), roles=[artists_a])

        # User limits apply in every server: a server admin may neither set, show nor reset them.
        for options in ({"images_per_day": 0}, {}, {"reset": True}):
            assert "Only admins" in await refused(s.mod_a, s.channel_a, "model quota", user=s.alice, **options)
        assert "Only admins" in await refused(s.alice, s.channel_a, "model quota", role=artists_a, images_per_day=9)
        assert "Only admins" in await refused(s.mod_b, s.channel_b, "model quota", user=s.bob, images_per_day=9)
        assert await overrides(bot) == 0 and await audit_actions(bot) == []

        # A server admin sets the limits of a role of their own server.
        text = await refused(s.mod_a, s.channel_a, "model quota", role=artists_a, images_per_day=7)
        assert f"<@&{artists_a.id}>" in text
        quota = await carol.slash(s.channel_a, "quota")
        assert quota.response is not None and "0 of 7 (7 left)" in quota.response.content

        # The bot admin sets a user's limits.
        text = await refused(s.owner, s.channel_b, "model quota", user=s.bob, images_per_day=2)
        assert "2 images per 24 hours" in text
        assert await overrides(bot) == 2 and await audit_actions(bot) == ["quota.set", "quota.set"]


async def test_quota_exemption_is_for_bot_admins_only(make_bot: BotFactory) -> None:
    bot = await make_bot()
    async with simcord.run(bot, settle_timeout=60) as env:
        s = two_servers(env, bot)
        await bot.service.set_paused(True)
        for member in (s.mod_a, s.owner):
            await bot.service.set_quota("user", f"discord:{member.id}", "test", images_per_day=1)
        for _ in range(2):
            await s.mod_a.slash(s.channel_a, "generate", prompt="1girl", steps=1, aspect="1:1")
            await s.owner.slash(s.channel_b, "generate", prompt="1girl", steps=1, aspect="1:1")
        assert len(await jobs_of(bot, s.mod_a.id)) == 1  # Manage Server does not lift the limit
        assert len(await jobs_of(bot, s.owner.id)) == 2  # a bot admin is exempt
