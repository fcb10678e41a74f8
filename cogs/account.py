"""/quota (remaining images of the rolling 24 hours, reset time, jobs waiting) and /history (own jobs,
newest first, paged, with a way to rerun one). Both ephemeral."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.jobs import JobRecord
from bot.messages import render
from bot.permissions import owner_key
from cogs.errors import locale_of, report_error, send_ephemeral
from cogs.results import reroll, role_ids

if TYPE_CHECKING:
    from bot.app import AnimeBot

PER_PAGE = 5
PROMPT_CHARS = 60
VIEW_TIMEOUT = 600.0


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


class HistoryView(discord.ui.View):
    """Previous/Next and a rerun menu for one page of one user's history; only that user may use it."""

    def __init__(self, bot: AnimeBot, user_id: int, page: int, total: int, jobs: list[JobRecord], locale: str) -> None:
        super().__init__(timeout=VIEW_TIMEOUT)
        self.bot = bot
        self.user_id = user_id
        self.menu: discord.ui.Select[HistoryView] | None = None
        self.show(page, total, jobs, locale)

    def show(self, page: int, total: int, jobs: list[JobRecord], locale: str) -> None:
        """(Re)build the buttons and the menu for one page."""
        self.clear_items()
        self.page = page
        pages = max(1, math.ceil(total / PER_PAGE))
        previous: discord.ui.Button[HistoryView] = discord.ui.Button(
            label=render("history_previous", locale), custom_id="history:previous", disabled=page <= 0
        )
        following: discord.ui.Button[HistoryView] = discord.ui.Button(
            label=render("history_next", locale), custom_id="history:next", disabled=page >= pages - 1
        )
        previous.callback = self._previous  # type: ignore[method-assign]
        following.callback = self._next  # type: ignore[method-assign]
        self.add_item(previous)
        self.add_item(following)
        self.menu = None
        if jobs:
            menu: discord.ui.Select[HistoryView] = discord.ui.Select(
                custom_id="history:rerun",
                placeholder=render("history_rerun", locale),
                options=[
                    discord.SelectOption(
                        label=render("history_rerun_option", locale, job_id=job.id),
                        value=str(job.id),
                        description=shorten(job.request.choices.prompt, 100),
                    )
                    for job in jobs
                ],
            )
            menu.callback = self._rerun  # type: ignore[method-assign]
            self.menu = menu
            self.add_item(menu)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.user_id:
            return True
        await send_ephemeral(interaction, render("not_your_menu", locale_of(interaction)))
        return False

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]) -> None:
        await report_error(interaction, error)

    async def _show(self, interaction: discord.Interaction, page: int) -> None:
        locale = locale_of(interaction)
        page, jobs, total = await history_jobs(self.bot, interaction.user, page)
        self.show(page, total, jobs, locale)
        await interaction.response.edit_message(content=history_text(jobs, page, total, locale), view=self)

    async def _previous(self, interaction: discord.Interaction) -> None:
        await self._show(interaction, max(0, self.page - 1))

    async def _next(self, interaction: discord.Interaction) -> None:
        await self._show(interaction, self.page + 1)

    async def _rerun(self, interaction: discord.Interaction) -> None:
        assert self.menu is not None
        job_id = int(self.menu.values[0])
        try:
            await reroll(self.bot, job_id, interaction.user, interaction.channel_id, interaction)
        except Exception as error:  # e.g. the quota: the same ephemeral report as the command tree's
            await report_error(interaction, error)


async def history_jobs(bot: AnimeBot, user: discord.abc.User, page: int) -> tuple[int, list[JobRecord], int]:
    """One page of the user's jobs (past the end: the last page), with the page number and the total."""
    owner = owner_key(user)
    jobs, total = await bot.service.history(owner, page, PER_PAGE)
    if not jobs and page > 0:
        page = max(0, math.ceil(total / PER_PAGE) - 1)
        jobs, total = await bot.service.history(owner, page, PER_PAGE)
    return page, jobs, total


async def history_page(bot: AnimeBot, user: discord.abc.User, page: int, locale: str) -> tuple[str, HistoryView | None]:
    page, jobs, total = await history_jobs(bot, user, page)
    text = history_text(jobs, page, total, locale)
    view = HistoryView(bot, user.id, page, total, jobs, locale) if total else None
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
    await bot.add_cog(Account(bot))
