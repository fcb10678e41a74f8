"""Queueing a generation for the user of an interaction: /generate and the /describe button share it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.core.jobs import JobRecord
from bot.core.messages import render
from bot.core.positions import coarse
from bot.discord_app.acknowledge import InTime, retry_busy
from bot.discord_app.delivery import Target, queued_text
from bot.discord_app.interactions import guild_key, locale_of
from bot.discord_app.permissions import is_bot_admin, owner_key, role_ids
from bot.prompts.builder import default_quality
from bot.prompts.dialects import load_dialect
from bot.prompts.requests import GenerationRequest

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

QUEUED_PROMPT_CHARS = 200  # the prompt shown in the "queued" answer


async def submit_and_announce(bot: AnimeBot, reply: InTime, request: GenerationRequest) -> JobRecord:
    """Submit `request` for the interaction's user (the service validates it, applies the content policy,
    the pre-flight memory check and the quotas: a refusal is a UserError and nothing is queued; a busy
    store is tried again), answer with the queue position and the quality tags added by default, and hand
    the job to delivery: once it is queued its result comes, whatever fails after."""
    interaction = reply.interaction
    user = interaction.user
    locale = locale_of(interaction)
    job = await retry_busy(
        lambda: bot.service.submit(
            request,
            owner_key(user),
            owner_name=user.display_name,
            guild_id=guild_key(interaction),
            channel_id=str(interaction.channel_id) if interaction.channel_id else None,
            role_ids=role_ids(user),
            exempt=is_bot_admin(bot.config.discord, user),  # quota exemption is global
            locale=locale,
        )
    )
    target = Target(interaction.channel_id or 0, user.id, interaction=interaction, locale=locale)
    try:
        position = await bot.service.position(job.id) or 1
        prompt = job.request.choices.prompt[:QUEUED_PROMPT_CHARS]
        target.shown = coarse(position)  # what the position edits compare with (bot/core/positions.py)
        text = queued_text(locale, job.id, target.shown, prompt)
        added = default_quality(load_dialect(bot.config.models[job.model].dialect), job.request.choices)
        if added:  # no quality picked: say which of the model's recommended tags were added
            text += "\n" + render("quality_added", locale, terms=", ".join(added))
        if bot.service.waiting_for_worker():  # redis mode, no worker online or Redis down: it is kept and waits
            text += "\n" + render("queue_no_worker", locale)
        await reply.send(text)
    except BaseException:
        target.failed = True  # not acknowledged (a Discord hiccup, a bug): the result is posted in the channel
        raise
    finally:
        bot.deliveries.start(job, target)
    return job
