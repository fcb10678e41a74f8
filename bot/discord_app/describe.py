"""The /describe answer and its "Generate with these tags" button.

The answer holds the prompt in a code block; the button (a DynamicItem whose custom_id carries the asking
user, so it works after a restart) reads the prompt back from the message it sits under (Discord sends
that message with the click, and only the bot can write it) and queues it as /generate does: through
service.submit, so the content policy of the channel where it is clicked, the quotas and the pre-flight
apply, and the result is delivered like a /generate's."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.core.errors import UserError
from bot.core.messages import render
from bot.discord_app.acknowledge import InTime
from bot.discord_app.errors import report_error
from bot.discord_app.interactions import bot_of, guild_key
from bot.discord_app.permissions import channel_allows_nsfw
from bot.discord_app.submit import submit_and_announce
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from inference.tagger import Rating, TagResult

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

_PROMPT_BLOCK = re.compile(r"```\n(.+?)\n```", re.DOTALL)


def describe_text(result: TagResult, prompt: str, model: str, locale: str) -> str:
    """The answer: the image's rating and the prompt, in a code block the button reads back."""
    rating: Rating = result.rating
    return render(
        "describe_result",
        locale,
        rating=render(f"describe_rating_{rating}", locale),
        score=result.rating_scores[rating],
        model=model,
        prompt=prompt.replace("`", "'"),
    )


def prompt_of(message: discord.Message | None) -> str | None:
    """The prompt a /describe answer holds (None: not one)."""
    if message is None:
        return None
    found = _PROMPT_BLOCK.search(message.content or "")
    if found is None:
        return None
    return found.group(1).strip() or None


class DescribeGenerateButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"animebot:describe:(?P<user>\d+)"
):
    """Queue a /generate of the description's prompt, for the user who asked for the description."""

    def __init__(self, user_id: int, label: str = "") -> None:
        super().__init__(
            discord.ui.Button(
                label=label or "Generate",
                emoji="🎨",
                style=discord.ButtonStyle.primary,
                custom_id=f"animebot:describe:{user_id}",
            )
        )
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> DescribeGenerateButton:
        return cls(int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if interaction.user.id != self.user_id:  # forged, or a message shown to someone else
                raise UserError("describe_not_yours")
            prompt = prompt_of(interaction.message)
            if prompt is None:
                raise UserError("describe_expired")
            async with InTime(interaction) as reply:
                await queue_generation(bot_of(interaction), reply, PromptChoices(prompt))
        except Exception as error:  # components have no tree error handler: the same report
            await report_error(interaction, error)


def describe_view(user_id: int, locale: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(DescribeGenerateButton(user_id, render("describe_generate_button", locale)))
    return view


async def queue_generation(bot: AnimeBot, reply: InTime, choices: PromptChoices) -> None:
    """Submit `choices` for the interaction's user on the active model, as /generate does (the channel's
    nsfw rule, quotas, the service's validation and content policy: a refusal is a UserError and nothing
    is queued), answer with the queue position and hand the job to delivery."""
    interaction = reply.interaction
    guild_id = guild_key(interaction)
    model = await bot.service.active_model(guild_id)
    request = GenerationRequest(model, choices, nsfw_allowed=channel_allows_nsfw(interaction.channel))
    await submit_and_announce(bot, reply, request)
