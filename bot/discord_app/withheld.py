"""Seeing a withheld result (docs/content-policy.md, section 5): its owner, and the admins of the server it
was asked in, get its images in an ephemeral answer that only they see (the notice's button, or
`/withheld show`); never a post in a channel. Anyone else is answered as if there were no such result, so
a guessed job id reveals nothing."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.core.errors import UserError
from bot.core.jobs import JobRecord
from bot.core.messages import render
from bot.discord_app.acknowledge import InTime
from bot.discord_app.errors import report_error
from bot.discord_app.interactions import bot_of, locale_of
from bot.discord_app.permissions import is_server_admin, owner_key
from bot.discord_app.views import shorten

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

WITHHELD_EMOJI = "👁️"


def may_view(bot: AnimeBot, user: discord.abc.User, job: JobRecord) -> bool:
    """The job's owner, an admin of the server the job was asked in (Manage Server THERE), or a bot admin."""
    return owner_key(user) == job.owner_id or is_server_admin(bot.config.discord, user, job.guild_id)


async def viewable_job(bot: AnimeBot, user: discord.abc.User, job_id: int) -> JobRecord:
    """The withheld job `job_id` if `user` may see it; else UserError withheld_not_found (whether the job
    exists, was posted, or belongs to someone else: the same answer)."""
    job = await bot.service.job(job_id)
    if job is None or job.withheld is None or not may_view(bot, user, job):
        raise UserError("withheld_not_found", job_id=job_id)
    return job


async def withheld_files(bot: AnimeBot, job: JobRecord, limit: int) -> list[discord.File]:
    """The job's images as spoilered attachments that fit in `limit` bytes."""
    from bot.discord_app.delivery import image_files

    return await image_files(bot.service, job, limit, spoiler=True)


async def show_withheld(reply: InTime, job_id: int) -> None:
    """Answer `reply`'s interaction, ephemerally, with the withheld job's images (or why not)."""
    interaction = reply.interaction
    bot = bot_of(interaction)
    job = await viewable_job(bot, interaction.user, job_id)
    try:
        files = await withheld_files(bot, job, interaction.filesize_limit)
    except OSError:  # deleted or damaged on disk
        raise UserError("withheld_missing", job_id=job.id) from None
    text = render("withheld_shown", locale_of(interaction), job_id=job.id, rating=job.withheld)
    none = discord.AllowedMentions.none()
    if reply.deferred:  # an edit of the ephemeral "thinking…" carries the files as attachments
        await interaction.edit_original_response(content=text, attachments=files, allowed_mentions=none)
    else:
        await reply.send(text, files=files, allowed_mentions=none)


class ShowWithheldButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"animebot:withheld:(?P<job>\d+)"):
    """Under the private notice of a withheld result: shows its images to whoever may see them, ephemerally.
    Persistent (the job id is in its custom_id): it works after a restart."""

    def __init__(self, job_id: int, label: str | None = None) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            emoji=WITHHELD_EMOJI,
            label=label,
            style=discord.ButtonStyle.secondary,
            custom_id=f"animebot:withheld:{job_id}",
        )
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ShowWithheldButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            async with InTime(interaction, ephemeral=True) as reply:
                await show_withheld(reply, self.job_id)
        except Exception as error:  # buttons have no tree error handler: the same report
            await report_error(interaction, error)


def withheld_view(job: JobRecord, locale: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ShowWithheldButton(job.id, render("withheld_button", locale)))
    return view


def withheld_list_text(jobs: list[JobRecord], locale: str, *, server: bool) -> str:
    """The lines of `/withheld list`: the caller's own withheld results, or the server's (with their owners)."""
    if not jobs:
        return render("withheld_list_empty", locale)
    lines = [render("withheld_list_server" if server else "withheld_list_own", locale)]
    for job in jobs:
        owner = job.owner_id.removeprefix("discord:")
        lines.append(
            render(
                "withheld_list_line",
                locale,
                job_id=job.id,
                rating=job.withheld,
                owner=f"<@{owner}>" if owner.isdigit() else owner,
                at=int(job.created_at),
                prompt=shorten(job.request.choices.prompt),
            )
        )
    return "\n".join(lines)[:2000]
