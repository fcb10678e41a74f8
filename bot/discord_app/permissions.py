"""Who may do what, and where: bot admins (configured, global), server admins (Manage Server, in that
server only), job owners, age-restricted channels. Pure checks on discord objects."""

from __future__ import annotations

from typing import Any

import discord

from bot.config import DiscordSettings
from bot.core.jobs import JobRecord


def is_bot_admin(settings: DiscordSettings, user: discord.abc.User) -> bool:
    """A configured bot admin ([discord] admin_user_ids, or a member holding one of admin_role_ids): the
    actions that reach every server (the global queue, the global default model, user quotas, any job,
    quota exemption)."""
    if user.id in settings.admin_user_ids:
        return True
    return isinstance(user, discord.Member) and any(role.id in settings.admin_role_ids for role in user.roles)


def is_server_admin(settings: DiscordSettings, user: discord.abc.User, guild_id: int | str | None) -> bool:
    """May administer the bot in the server `guild_id`: a bot admin, or a member of THAT server with Manage
    Server there. Manage Server in one server gives nothing in another, nor in DMs (guild_id None)."""
    if is_bot_admin(settings, user):
        return True
    if guild_id is None or not isinstance(user, discord.Member):
        return False
    return str(user.guild.id) == str(guild_id) and user.guild_permissions.manage_guild


def owner_key(user: discord.abc.Snowflake) -> str:
    """How the store names a Discord user."""
    return f"discord:{user.id}"


def role_ids(user: discord.abc.User | None) -> list[str]:
    """The member's role ids as the store names them (none outside a server)."""
    return [str(role.id) for role in user.roles] if isinstance(user, discord.Member) else []


def may_manage(settings: DiscordSettings, user: discord.abc.User, job: JobRecord) -> bool:
    """The job's owner, an admin of the server it was asked in, or a bot admin."""
    return owner_key(user) == job.owner_id or is_server_admin(settings, user, job.guild_id)


def may_reroll(settings: DiscordSettings, user: discord.abc.User, job: JobRecord) -> bool:
    return settings.reroll_by_anyone or may_manage(settings, user, job)


def channel_allows_nsfw(channel: Any) -> bool:
    """Age-restricted text/voice/forum channels; a thread follows its parent. DMs, group DMs and unknown
    channels never allow it."""
    if channel is None or isinstance(channel, (discord.DMChannel, discord.GroupChannel)):
        return False
    if isinstance(channel, discord.Thread):
        channel = channel.parent
        if channel is None:
            return False
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False

