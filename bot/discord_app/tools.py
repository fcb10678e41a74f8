"""⬆ upscale and 🎲 vary for a Discord user: a new job made from one image of a result, under the asking
channel's nsfw rule and the same permission as 🔄 (`may_reroll`), announced and delivered like a reroll."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import discord

from bot.core.errors import UserError
from bot.discord_app.acknowledge import InTime, retry_busy
from bot.discord_app.interactions import locale_of
from bot.discord_app.permissions import channel_allows_nsfw, is_bot_admin, may_reroll, owner_key, role_ids
from bot.discord_app.rerolls import announce, job_or_error

if TYPE_CHECKING:
    from bot.core.jobs import JobRecord
    from bot.discord_app.client import AnimeBot

Tool = Literal["upscale", "vary"]
SCALES = (1.5, 2.0)  # what ⬆ offers


def scale_text(scale: float) -> str:
    """1.5 → "1.5", 2.0 → "2": as the custom_id and the messages write a factor."""
    return f"{scale:g}"


async def allowed_job(bot: AnimeBot, job_id: int, user: discord.abc.User) -> JobRecord:
    """The job, if `user` may make new jobs from it (its owner, an admin, anyone where reroll_by_anyone)."""
    job = await job_or_error(bot, job_id)
    if not may_reroll(bot.config.discord, user, job):
        raise UserError("not_allowed", job_id=job.id)
    return job


async def make_from_result(
    bot: AnimeBot,
    tool: Tool,
    job_id: int,
    index: int,
    scale: float | None,
    user: discord.abc.User,
    channel: Any,
    reply: InTime,
) -> None:
    """Queue the vary or upscale of image `index` of `job_id` for `user` in `channel`, and deliver it like a new
    request. Raises UserError (nothing queued) when the user may not, the image is gone, a quota refuses..."""
    job = await allowed_job(bot, job_id, user)
    locale = locale_of(reply.interaction)
    guild = getattr(channel, "guild", None)
    settings = bot.config.discord
    options: dict[str, Any] = {
        "role_ids": role_ids(user),
        "exempt": is_bot_admin(settings, user),
        "guild_id": str(guild.id) if guild is not None else None,
        "channel_id": str(channel.id) if channel is not None else None,
        "nsfw_allowed": channel_allows_nsfw(channel),
        "locale": locale,
    }
    by = owner_key(user)
    if tool == "upscale":
        new = await retry_busy(lambda: bot.service.upscale(job.id, index, by, scale=scale, **options))
        if scale is None:  # the model's factor: the new width over the image's (the request's size)
            scale = new.params.width / int((new.request.size or "1x1").split("x")[0])
        factor = scale_text(round(scale, 2))
        await announce(bot, new, user, reply, locale, "tool_upscaling", job_id=job.id, index=index + 1, scale=factor)
    else:
        new = await retry_busy(lambda: bot.service.vary(job.id, index, by, **options))
        await announce(bot, new, user, reply, locale, "tool_varying", job_id=job.id, index=index + 1)
