"""Rerunning a job for a Discord user (🔄 button or reaction, the history's rerun menu): the same request
with a new seed, under the asking channel's nsfw rule, delivered like a new request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord

from bot.core.errors import UserError
from bot.core.jobs import JobRecord
from bot.core.messages import render
from bot.core.positions import coarse, is_exact
from bot.discord_app.acknowledge import InTime, retry_busy
from bot.discord_app.delivery import Target
from bot.discord_app.interactions import locale_of
from bot.discord_app.permissions import channel_allows_nsfw, is_bot_admin, may_reroll, owner_key, role_ids

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot


async def job_or_error(bot: AnimeBot, job_id: int) -> JobRecord:
    job = await bot.service.job(job_id)
    if job is None:
        raise UserError("job_not_found", job_id=job_id)
    return job


async def reroll(
    bot: AnimeBot,
    job_id: int,
    user: discord.abc.User,
    channel: Any,
    reply: InTime | None = None,
    locale: str = "en",
) -> None:
    """Queue the job again with a new seed for `user`, in `channel` (under its nsfw rule), and deliver it
    like a new request. Answered through `reply` (a button's or menu's interaction, in its locale), or
    (a reaction has no interaction) by a channel post in `locale`."""
    job = await job_or_error(bot, job_id)
    settings = bot.config.discord
    if not may_reroll(settings, user, job):
        raise UserError("not_allowed", job_id=job.id)
    locale = locale_of(reply.interaction) if reply is not None else locale
    guild = getattr(channel, "guild", None)
    new = await retry_busy(  # a busy store is tried again
        lambda: bot.service.reroll(
            job.id,
            owner_key(user),
            role_ids=role_ids(user),
            exempt=is_bot_admin(settings, user),
            guild_id=str(guild.id) if guild is not None else None,
            channel_id=str(channel.id) if channel is not None else None,
            nsfw_allowed=channel_allows_nsfw(channel),
            locale=locale,
        )
    )
    await announce(bot, new, user, reply, locale, "rerolled", job_id=job.id)


async def announce(
    bot: AnimeBot,
    new: JobRecord,
    user: discord.abc.User,
    reply: InTime | None,
    locale: str,
    key: str,
    **params: object,
) -> None:
    """Tell `user` that the job `new` (made from another: a reroll, a vary, an upscale) is queued, with its
    position (message `key`, or `key`_about for a coarse one, given `new_id`, `position` and `params`), and deliver
    its result like a new request's. Answered through `reply`, or by a channel post in `locale`."""
    target = Target(int(new.channel_id or 0), user.id, locale=locale)
    try:  # the new job is queued: whatever fails from here on, its result comes
        position = await bot.service.position(new.id) or 1
        target.shown = coarse(position)  # what the position edits compare with (bot/core/positions.py)
        key = key if is_exact(target.shown) else f"{key}_about"
        text = render(key, locale, new_id=new.id, position=target.shown, **params)
        if bot.service.waiting_for_worker():  # redis mode, no worker online or Redis down: it is kept and waits
            text += "\n" + render("queue_no_worker", locale)
        if reply is not None:
            await reply.send(text)
            target.interaction = reply.interaction
        else:
            target.message = await bot.deliveries.post(target, content=f"{target.mention} {text}")
    finally:
        bot.deliveries.start(new, target)  # queued: its result comes even if this notice did not
