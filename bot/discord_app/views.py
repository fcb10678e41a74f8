"""The bot's persistent components. They are DynamicItems whose custom_id carries what they act on
(a job id, an image and a factor; a history list's owner and page), so they work after a restart: the buttons
under a result (🔄 reroll, ⬆ upscale, 🎲 vary, 🗑 delete, ℹ️ parameters), the choice of image (and factor) that
⬆ and 🎲 show only to the one who clicked, and the paged /history list with its rerun menu."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.core.errors import UserError
from bot.core.jobs import JobRecord
from bot.core.messages import render
from bot.discord_app.acknowledge import InTime
from bot.discord_app.delivery import kind_text
from bot.discord_app.errors import report_error
from bot.discord_app.interactions import bot_of, locale_of, send_ephemeral
from bot.discord_app.permissions import is_bot_admin, may_manage, owner_key
from bot.discord_app.rerolls import job_or_error, reroll
from bot.discord_app.tools import SCALES, Tool, allowed_job, make_from_result, scale_text

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

REROLL_EMOJI = "🔄"
TOOL_EMOJIS: dict[Tool, str] = {"upscale": "⬆️", "vary": "🎲"}


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"animebot:(?P<action>\w+):(?P<job>\d+)"):
    action = ""
    emoji = ""

    def __init__(
        self, job_id: int, *, custom_id: str | None = None, emoji: str | None = None, label: str | None = None
    ) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            emoji=emoji or self.emoji or None,
            label=label,
            style=discord.ButtonStyle.secondary,
            custom_id=custom_id or f"animebot:{self.action}:{job_id}",
        )
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _JobButton:
        return cls(int(match["job"]))

    ephemeral = True  # whether the answer (and a deferral while the store is slow) is ephemeral

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            async with InTime(interaction, ephemeral=self.ephemeral) as reply:
                await self.run(reply, bot_of(interaction))
        except Exception as error:  # buttons have no tree error handler: the same report
            await report_error(interaction, error)

    async def run(self, reply: InTime, bot: AnimeBot) -> None:
        raise NotImplementedError

    async def job(self, interaction: discord.Interaction, bot: AnimeBot) -> JobRecord:
        """The button's job, if it belongs where the button was clicked: a result's buttons sit in its job's
        channel. A custom_id naming a job of another channel (forged, or replayed elsewhere) is answered as
        if the job did not exist, so it reveals nothing (the owner and bot admins excepted)."""
        job = await job_or_error(bot, self.job_id)
        user = interaction.user
        here = job.channel_id is not None and job.channel_id == str(interaction.channel_id)
        if not (here or owner_key(user) == job.owner_id or is_bot_admin(bot.config.discord, user)):
            raise UserError("job_not_found", job_id=self.job_id)
        return job


class RerollButton(_JobButton, template=r"animebot:reroll:(?P<job>\d+)"):
    action = "reroll"
    emoji = REROLL_EMOJI
    ephemeral = False

    async def run(self, reply: InTime, bot: AnimeBot) -> None:
        interaction = reply.interaction
        await self.job(interaction, bot)
        await reroll(bot, self.job_id, interaction.user, interaction.channel, reply)


class DeleteButton(_JobButton, template=r"animebot:delete:(?P<job>\d+)"):
    action = "delete"
    emoji = "🗑️"

    async def run(self, reply: InTime, bot: AnimeBot) -> None:
        interaction = reply.interaction
        job = await self.job(interaction, bot)
        if not may_manage(bot.config.discord, interaction.user, job):
            raise UserError("not_allowed", job_id=job.id)
        if interaction.message is not None:
            await interaction.message.delete()  # first: "deleted" only once it is
        await reply.send(render("deleted", locale_of(interaction)))


class InfoButton(_JobButton, template=r"animebot:info:(?P<job>\d+)"):
    action = "info"
    emoji = "ℹ️"

    async def run(self, reply: InTime, bot: AnimeBot) -> None:
        job = await self.job(reply.interaction, bot)
        await reply.send(parameters_text(job, locale_of(reply.interaction)))


class ToolMenuButton(_JobButton, template=r"animebot:(?P<tool>upscale|vary):(?P<job>\d+)"):
    """⬆ (and 🎲 under a result of several images): shows the one who clicked, and only them, which image to use
    (and ⬆'s factor) as ToolButtons. Refuses those who may not use the result (as 🔄 does)."""

    def __init__(self, tool: Tool, job_id: int) -> None:
        super().__init__(job_id, custom_id=f"animebot:{tool}:{job_id}", emoji=TOOL_EMOJIS[tool])
        self.tool: Tool = tool

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ToolMenuButton:
        return cls("upscale" if match["tool"] == "upscale" else "vary", int(match["job"]))

    async def run(self, reply: InTime, bot: AnimeBot) -> None:
        interaction = reply.interaction
        await self.job(interaction, bot)
        job = await allowed_job(bot, self.job_id, interaction.user)
        indexes = [image.index for image in await bot.service.images(job.id)]
        if not indexes:
            raise UserError("image_not_found", job_id=job.id, index=1)
        locale = locale_of(interaction)
        text = render(f"tool_pick_{self.tool}", locale, job_id=job.id)
        await reply.send(text, view=tool_picker(self.tool, job.id, indexes, locale))


class ToolButton(
    _JobButton, template=r"animebot:(?P<tool>upscale|vary):(?P<job>\d+):(?P<index>\d{1,2})(?::(?P<scale>1\.5|2))?"
):
    """Upscale image `index` of a result by `scale` (None: the model's factor), or vary it: a new job, announced
    and delivered in the channel like a reroll. 🎲 under a one-image result is one of these."""

    ephemeral = False

    def __init__(
        self, tool: Tool, job_id: int, index: int, scale: float | None = None, *, label: str | None = None
    ) -> None:
        factor = "" if scale is None else f":{scale_text(scale)}"
        super().__init__(
            job_id,
            custom_id=f"animebot:{tool}:{job_id}:{index}{factor}",
            emoji=None if label else TOOL_EMOJIS[tool],
            label=label,
        )
        self.tool: Tool = tool
        self.index = index
        self.scale = scale

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ToolButton:
        tool: Tool = "upscale" if match["tool"] == "upscale" else "vary"
        scale = float(match["scale"]) if match["scale"] and tool == "upscale" else None
        return cls(tool, int(match["job"]), int(match["index"]), scale)

    async def run(self, reply: InTime, bot: AnimeBot) -> None:
        interaction = reply.interaction
        await self.job(interaction, bot)
        await make_from_result(
            bot, self.tool, self.job_id, self.index, self.scale, interaction.user, interaction.channel, reply
        )


def tool_picker(tool: Tool, job_id: int, indexes: list[int], locale: str) -> discord.ui.View:
    """A button per image (⬆: per image and factor), at most 25 (8 images x 2 factors fit)."""
    view = discord.ui.View(timeout=None)
    for index in indexes:
        if tool == "upscale":
            for scale in SCALES:
                label = render("tool_pick_upscale_label", locale, index=index + 1, scale=scale_text(scale))
                view.add_item(ToolButton(tool, job_id, index, scale, label=label))
        else:
            label = render("tool_pick_vary_label", locale, index=index + 1)
            view.add_item(ToolButton(tool, job_id, index, label=label))
    return view


BUTTONS: tuple[type[_JobButton], ...] = (RerollButton, DeleteButton, InfoButton, ToolMenuButton, ToolButton)


def parameters_text(job: JobRecord, locale: str) -> str:
    p = job.params
    width, height = p.output_size()
    text = render(
        "parameters", locale, job_id=job.id, model=job.model, prompt=p.prompt, negative=p.negative_prompt or "-",
        width=width, height=height, steps=p.steps, cfg=p.cfg, sampler=p.sampler,
        seeds=", ".join(str(s) for s in p.seeds),
    )
    source = p.source
    if source is not None and source.job_id is not None:
        text += "\n" + render(
            "parameters_from_result", locale, index=source.index + 1, parent=source.job_id, strength=p.strength
        )
    elif source is not None:
        text += "\n" + render("parameters_from_upload", locale, strength=p.strength)
    if p.hires is not None:
        text += "\n" + render("parameters_hires", locale, scale=f"{p.hires.scale:g}", strength=p.hires.strength)
    return text[:2000]


def result_view(job: JobRecord) -> discord.ui.View:
    """🔄 ⬆ 🎲 🗑 ℹ️ under a result (one row). 🎲 under one image varies it at once; under several it asks which."""
    view = discord.ui.View(timeout=None)
    vary: _JobButton = ToolButton("vary", job.id, 0) if job.params.count == 1 else ToolMenuButton("vary", job.id)
    upscale = ToolMenuButton("upscale", job.id)
    for button in (RerollButton(job.id), upscale, vary, DeleteButton(job.id), InfoButton(job.id)):
        view.add_item(button)
    return view


# -- /history ---------------------------------------------------------------------------------------

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
        state=render(f"state_{job.state.value}", locale)
        + ("" if job.withheld is None else " " + render("state_withheld", locale, rating=job.withheld)),
        model=job.model,
        seed=seed,
        prompt=shorten(job.request.choices.prompt),
    ) + kind_text(job, locale)


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
                async with InTime(interaction, update=True) as reply:  # in time, however slow the store
                    locale = locale_of(interaction)
                    text, view = await history_page(bot_of(interaction), interaction.user, self.page, locale)
                    await reply.send(text, view=view)
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
                bot = bot_of(interaction)
                async with InTime(interaction) as reply:
                    job = await job_or_error(bot, job_id)
                    if job.owner_id != owner_key(interaction.user):  # forged: the menu lists own jobs only
                        raise UserError("job_not_found", job_id=job_id)
                    await reroll(bot, job_id, interaction.user, interaction.channel, reply)
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
