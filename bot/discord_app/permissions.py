"""Who may do what, and where: admins, job owners, age-restricted channels. Pure checks on discord objects."""

from __future__ import annotations

from typing import Any

import discord

from bot.config import DiscordSettings


def is_admin(settings: DiscordSettings, user: discord.abc.User) -> bool:
    """A configured admin user or role, or a member with Manage Server."""
    if user.id in settings.admin_user_ids:
        return True
    if isinstance(user, discord.Member):
        if any(role.id in settings.admin_role_ids for role in user.roles):
            return True
        return user.guild_permissions.manage_guild
    return False


def owner_key(user: discord.abc.Snowflake) -> str:
    """How the store names a Discord user."""
    return f"discord:{user.id}"


def role_ids(user: discord.abc.User | None) -> list[str]:
    """The member's role ids as the store names them (none outside a server)."""
    return [str(role.id) for role in user.roles] if isinstance(user, discord.Member) else []


def may_manage(settings: DiscordSettings, user: discord.abc.User, owner_id: str) -> bool:
    """The job's owner or an admin."""
    return owner_key(user) == owner_id or is_admin(settings, user)


def may_reroll(settings: DiscordSettings, user: discord.abc.User, owner_id: str) -> bool:
    return settings.reroll_by_anyone or may_manage(settings, user, owner_id)


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

