"""The buttons under a result (🔄 reroll, 🗑 delete, ℹ️ parameters) and the 🔄 reaction. The buttons are
DynamicItems whose custom_id carries the job id, so they work after a restart."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.jobs import JobRecord
from bot.core.messages import language, render
from bot.discord_app.delivery import Target
from bot.discord_app.permissions import channel_allows_nsfw, is_admin, may_manage, may_reroll, owner_key, role_ids
from cogs.errors import report_error
from cogs.interactions import bot_of, locale_of, send_ephemeral

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

log = logging.getLogger(__name__)
REROLL_EMOJI = "🔄"


async def _job(bot: AnimeBot, job_id: int) -> JobRecord:
    job = await bot.service.job(job_id)
    if job is None:
        raise UserError("job_not_found", job_id=job_id)
    return job


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"animebot:(?P<action>\w+):(?P<job>\d+)"):
    action = ""
    emoji = ""

    def __init__(self, job_id: int) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            emoji=self.emoji, style=discord.ButtonStyle.secondary, custom_id=f"animebot:{self.action}:{job_id}"
        )
        super().__init__(button)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> _JobButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.run(interaction, bot_of(interaction))
        except Exception as error:  # buttons have no tree error handler: the same report
            await report_error(interaction, error)

    async def run(self, interaction: discord.Interaction, bot: AnimeBot) -> None:
        raise NotImplementedError


class RerollButton(_JobButton, template=r"animebot:reroll:(?P<job>\d+)"):
    action = "reroll"
    emoji = REROLL_EMOJI

    async def run(self, interaction: discord.Interaction, bot: AnimeBot) -> None:
        await reroll(bot, self.job_id, interaction.user, interaction.channel, interaction)


class DeleteButton(_JobButton, template=r"animebot:delete:(?P<job>\d+)"):
    action = "delete"
    emoji = "🗑️"

    async def run(self, interaction: discord.Interaction, bot: AnimeBot) -> None:
        job = await _job(bot, self.job_id)
        if not may_manage(bot.config.discord, interaction.user, job.owner_id):
            raise UserError("not_allowed", job_id=job.id)
        await interaction.response.send_message(render("deleted", locale_of(interaction)), ephemeral=True)
        if interaction.message is not None:
            await interaction.message.delete()


class InfoButton(_JobButton, template=r"animebot:info:(?P<job>\d+)"):
    action = "info"
    emoji = "ℹ️"

    async def run(self, interaction: discord.Interaction, bot: AnimeBot) -> None:
        job = await _job(bot, self.job_id)
        await send_ephemeral(interaction, parameters_text(job, locale_of(interaction)))


BUTTONS: tuple[type[_JobButton], ...] = (RerollButton, DeleteButton, InfoButton)


def parameters_text(job: JobRecord, locale: str) -> str:
    p = job.params
    return render(
        "parameters", locale, job_id=job.id, model=job.model, prompt=p.prompt, negative=p.negative_prompt or "-",
        width=p.width, height=p.height, steps=p.steps, cfg=p.cfg, sampler=p.sampler,
        seeds=", ".join(str(s) for s in p.seeds),
    )[:2000]


def result_view(job: JobRecord) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for button in BUTTONS:
        view.add_item(button(job.id))
    return view


async def reroll(
    bot: AnimeBot,
    job_id: int,
    user: discord.abc.User,
    channel: Any,
    interaction: discord.Interaction | None = None,
    locale: str = "en",
) -> None:
    """Queue the job again with a new seed for `user`, in `channel` (under its nsfw rule), and deliver it
    like a new request. The reply is in the interaction's locale, or (a reaction has none) in `locale`."""
    job = await _job(bot, job_id)
    settings = bot.config.discord
    if not may_reroll(settings, user, job.owner_id):
        raise UserError("not_allowed", job_id=job.id)
    locale = locale_of(interaction) if interaction is not None else locale
    guild = getattr(channel, "guild", None)
    new = await bot.service.reroll(
        job.id,
        owner_key(user),
        role_ids=role_ids(user),
        exempt=is_admin(settings, user),
        guild_id=str(guild.id) if guild is not None else None,
        channel_id=str(channel.id) if channel is not None else None,
        nsfw_allowed=channel_allows_nsfw(channel),
        locale=locale,
    )
    position = await bot.service.position(new.id) or 1
    text = render("rerolled", locale, job_id=job.id, new_id=new.id, position=position)
    target = Target(int(new.channel_id or 0), user.id, locale=locale)
    try:
        if interaction is not None:
            await interaction.response.send_message(text)
            target.interaction = interaction
        else:
            target.message = await bot.deliveries.post(target, content=f"{target.mention} {text}")
    finally:
        bot.deliveries.start(new, target)  # queued: its result comes even if this notice did not


class Results(commands.Cog):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if str(payload.emoji) != REROLL_EMOJI or self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        job_id = await self.bot.deliveries.job_for_message(payload.channel_id, payload.message_id)
        if job_id is None:
            return
        user = payload.member or self.bot.get_user(payload.user_id) or discord.Object(payload.user_id)
        channel = self.bot.get_channel(payload.channel_id) or discord.Object(payload.channel_id)
        try:
            job = await _job(self.bot, job_id)
            await reroll(self.bot, job_id, cast(discord.abc.User, user), channel, locale=self.locale(job, payload))
        except UserError as e:
            log.info("reaction reroll of job %s by %s refused: %s", job_id, payload.user_id, e)


    def locale(self, job: JobRecord, payload: discord.RawReactionActionEvent) -> str:
        """A reaction carries no locale: the owner's from their request, else the server's language."""
        if job.locale and job.owner_id == owner_key(discord.Object(payload.user_id)):
            return job.locale
        guild = self.bot.get_guild(payload.guild_id) if payload.guild_id else None
        return language(guild.preferred_locale.value) if guild is not None else "en"


async def setup(bot: AnimeBot) -> None:
    bot.add_dynamic_items(*BUTTONS)  # the buttons of results posted before this start work too
    await bot.add_cog(Results(bot))


async def teardown(bot: AnimeBot) -> None:
    bot.remove_dynamic_items(*BUTTONS)
