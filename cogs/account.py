"""/quota (remaining images of the rolling 24 hours, reset time, jobs waiting) and /history (own jobs,
newest first, paged, with a way to rerun one). Both ephemeral."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.jobs import JobRecord
from bot.core.messages import render
from bot.discord_app.permissions import owner_key, role_ids
from cogs.errors import report_error
from cogs.interactions import bot_of, locale_of, send_ephemeral
from cogs.results import reroll

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

PER_PAGE = 5
PROMPT_CHARS = 60


def shorten(text: str, limit: int = PROMPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def history_line(job: JobRecord, locale: str) -> str:
    seed = job.params.seeds[0] if job.params.seeds else "-"
    return render(
        "history_line",
        locale,
        job_id=job.id,
        at=int(job.created_at),
        state=render(f"state_{job.state.value}", locale),
        model=job.model,
        seed=seed,
        prompt=shorten(job.request.choices.prompt),
    )


def history_text(jobs: list[JobRecord], page: int, total: int, locale: str) -> str:
    if not total:
        return render("history_empty", locale)
    pages = max(1, math.ceil(total / PER_PAGE))
    lines = [render("history_header", locale, page=page + 1, pages=pages, total=total)]
    lines += [history_line(job, locale) for job in jobs]
    return "\n".join(lines)[:2000]


async def _owner_only(interaction: discord.Interaction, user_id: int) -> bool:
    """The list is ephemeral, so only its owner sees it; this is the second line of defence."""
    if interaction.user.id == user_id:
        return True
    await send_ephemeral(interaction, render("not_your_menu", locale_of(interaction)))
    return False


class HistoryPageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"animebot:history:(?P<direction>previous|next):(?P<user>\d+):(?P<page>\d+)",
):
    """Previous/Next: the custom_id carries the list's owner and the page to show, so it works after a
    restart."""

    def __init__(self, direction: str, user_id: int, page: int, *, label: str = "", disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=label or direction,
                style=discord.ButtonStyle.secondary,
                custom_id=f"animebot:history:{direction}:{user_id}:{page}",
                disabled=disabled,
            )
        )
        self.user_id = user_id
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> HistoryPageButton:
        return cls(match["direction"], int(match["user"]), int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if await _owner_only(interaction, self.user_id):
                locale = locale_of(interaction)
                text, view = await history_page(bot_of(interaction), interaction.user, self.page, locale)
                await interaction.response.edit_message(content=text, view=view)
        except Exception as error:  # components have no tree error handler: the same report
            await report_error(interaction, error)


class HistoryRerunMenu(discord.ui.DynamicItem[discord.ui.Select[Any]], template=r"animebot:rerun:(?P<user>\d+)"):
    """Rerun one of the page's jobs (counts against the quota); works after a restart too."""

    def __init__(self, user_id: int, menu: discord.ui.Select[Any]) -> None:
        super().__init__(menu)
        self.user_id = user_id

    @classmethod
    def build(cls, user_id: int, jobs: list[JobRecord], locale: str) -> HistoryRerunMenu:
        options = [
            discord.SelectOption(
                label=render("history_rerun_option", locale, job_id=job.id),
                value=str(job.id),
                description=shorten(job.request.choices.prompt, 100),
            )
            for job in jobs
        ]
        menu: discord.ui.Select[Any] = discord.ui.Select(
            custom_id=f"animebot:rerun:{user_id}", placeholder=render("history_rerun", locale), options=options
        )
        return cls(user_id, menu)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> HistoryRerunMenu:
        assert isinstance(item, discord.ui.Select)
        return cls(int(match["user"]), item)

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if await _owner_only(interaction, self.user_id):
                job_id = int(self.item.values[0])
                await reroll(bot_of(interaction), job_id, interaction.user, interaction.channel, interaction)
        except Exception as error:  # e.g. the quota: the same ephemeral report as the command tree's
            await report_error(interaction, error)


HISTORY_ITEMS: tuple[type[discord.ui.DynamicItem[Any]], ...] = (HistoryPageButton, HistoryRerunMenu)


def history_view(user_id: int, page: int, total: int, jobs: list[JobRecord], locale: str) -> discord.ui.View:
    """Previous/Next and the rerun menu for one page of one user's history."""
    pages = max(1, math.ceil(total / PER_PAGE))
    view = discord.ui.View(timeout=None)
    label = render("history_previous", locale)
    view.add_item(HistoryPageButton("previous", user_id, max(0, page - 1), label=label, disabled=page <= 0))
    label = render("history_next", locale)
    view.add_item(HistoryPageButton("next", user_id, min(pages - 1, page + 1), label=label, disabled=page >= pages - 1))
    if jobs:
        view.add_item(HistoryRerunMenu.build(user_id, jobs, locale))
    return view


async def history_jobs(bot: AnimeBot, user: discord.abc.User, page: int) -> tuple[int, list[JobRecord], int]:
    """One page of the user's jobs (past the end: the last page), with the page number and the total."""
    owner = owner_key(user)
    jobs, total = await bot.service.history(owner, page, PER_PAGE)
    if not jobs and page > 0:
        page = max(0, math.ceil(total / PER_PAGE) - 1)
        jobs, total = await bot.service.history(owner, page, PER_PAGE)
    return page, jobs, total


async def history_page(
    bot: AnimeBot, user: discord.abc.User, page: int, locale: str
) -> tuple[str, discord.ui.View | None]:
    page, jobs, total = await history_jobs(bot, user, page)
    text = history_text(jobs, page, total, locale)
    view = history_view(user.id, page, total, jobs, locale) if total else None
    return text, view


class Account(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    @app_commands.command(name="quota", description="Your remaining images and when more free up")
    async def quota(self, interaction: discord.Interaction) -> None:
        locale = locale_of(interaction)
        user = interaction.user
        status = await self.bot.service.quota(owner_key(user), role_ids(user))
        unlimited = render("quota_unlimited", locale)
        limit = status.limits.images_per_day
        reset = render("quota_reset", locale, at=math.ceil(status.resets_at)) if status.resets_at else ""
        text = render(
            "quota_status",
            locale,
            used=status.used,
            limit=unlimited if limit is None else limit,
            remaining=unlimited if status.remaining is None else status.remaining,
            reset=reset,
            queued=status.queued,
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="history", description="Your past jobs, newest first, with a way to rerun one")
    @app_commands.describe(page="Page number (5 jobs a page)")
    async def history(self, interaction: discord.Interaction, page: app_commands.Range[int, 1, 10000] = 1) -> None:
        text, view = await history_page(self.bot, interaction.user, page - 1, locale_of(interaction))
        if view is None:
            await interaction.response.send_message(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, view=view, ephemeral=True)


async def setup(bot: AnimeBot) -> None:
    bot.add_dynamic_items(*HISTORY_ITEMS)  # lists opened before a restart keep working
    await bot.add_cog(Account(bot))


async def teardown(bot: AnimeBot) -> None:
    bot.remove_dynamic_items(*HISTORY_ITEMS)
