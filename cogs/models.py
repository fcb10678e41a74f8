"""/model list, /model info, and the admin commands /model switch (load, then make active; a failed
load leaves the previous model active) and /model quota (a user's or role's limits). Server admins
switch their server's model and set their server's roles' limits; bot admins also the global default
model and users' limits (which apply everywhere). Rights are checked here in code; the service writes
every admin action to the audit log."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Literal, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.events import Event, ModelLoading
from bot.core.executor import WorkerStatus, holding, serving
from bot.core.memory_info import memory_lines
from bot.core.messages import render
from bot.core.quotas import QuotaLimits, format_wait
from bot.discord_app.acknowledge import InTime
from bot.discord_app.choices import Choice, filter_choices
from bot.discord_app.interactions import bot_of, guild_key, locale_of
from bot.discord_app.permissions import is_bot_admin, is_server_admin, owner_key
from bot.prompts.dialects import load_dialect
from inference.sources import SourceState, describe_source
from inference.specs import ModelSpec

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

log = logging.getLogger(__name__)
LOADING_EDIT_INTERVAL = 1.0  # seconds between edits of the loading message
WORKERS_SHOWN = 10  # workers listed per line by /model info (redis mode)


def require_server_admin(interaction: discord.Interaction) -> None:
    """Manage Server in the interaction's server (or a bot admin); else admin_only, and nothing changes."""
    if not is_server_admin(bot_of(interaction).config.discord, interaction.user, guild_key(interaction)):
        raise UserError("admin_only")


def require_bot_admin(interaction: discord.Interaction) -> None:
    """A configured bot admin: for what reaches every server. Else admin_only, and nothing changes."""
    if not is_bot_admin(bot_of(interaction).config.discord, interaction.user):
        raise UserError("admin_only")


class Models(commands.GroupCog, group_name="model", group_description="The image models"):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot
        super().__init__()

    async def _state(self, name: str) -> SourceState:
        spec = self.bot.config.models[name]
        return await asyncio.to_thread(describe_source, spec.source, self.bot.config.cache_dir)

    @app_commands.command(name="list", description="The configured models and which one is active")
    async def list_models(self, interaction: discord.Interaction) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            await reply.send(await self.list_text(interaction))

    async def list_text(self, interaction: discord.Interaction) -> str:
        locale = locale_of(interaction)
        active = await self.bot.service.active_model(guild_key(interaction))
        lines = [render("model_list_header", locale, active=active)]
        for name, spec in self.bot.config.models.items():
            state = await self._state(name)
            marker = "▶" if name == active else "·"
            lines.append(
                render("model_list_line", locale, marker=marker, name=name, family=spec.family, state=state.state)
            )
        return "\n".join(lines)[:2000]

    @app_commands.command(name="info", description="Where a model comes from and whether it is ready")
    @app_commands.describe(name="Model (default: the active one)")
    async def info(self, interaction: discord.Interaction, name: str | None = None) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            await reply.send(await self.info_text(interaction, name))

    async def info_text(self, interaction: discord.Interaction, name: str | None) -> str:
        locale = locale_of(interaction)
        models = self.bot.config.models
        active = await self.bot.service.active_model(guild_key(interaction))
        name = name or active
        if name not in models:
            raise UserError("unknown_model", value=name, options=", ".join(models))
        spec = models[name]
        state = await self._state(name)
        text = render(
            "model_info",
            locale,
            name=name,
            family=spec.family,
            dialect=spec.dialect,
            source=state.description,
            state=state.state,
            active=render("model_yes" if name == active else "model_no", locale),
        )
        memory = await asyncio.to_thread(self._memory_lines, spec, locale)
        return "\n".join([text, *memory, *self._worker_lines(name, locale)])[:2000]

    def _worker_lines(self, name: str, locale: str) -> list[str]:
        """Redis mode: the workers that hold the model now and those that can load it (none in local mode,
        where the one worker is this process)."""
        status = self.bot.service.executor_status()
        if status.mode != "redis":
            return []
        if not status.online or not status.workers:
            return [render("model_info_no_worker", locale)]

        def listed(workers: tuple[WorkerStatus, ...]) -> str:
            shown = [render("model_info_worker", locale, id=w.id, device=w.device) for w in workers[:WORKERS_SHOWN]]
            return ", ".join(shown) or render("model_info_none", locale)

        held = holding(status, name)
        others = tuple(w for w in serving(status, name) if w not in held)
        return [render("model_info_workers", locale, held=listed(held), served=listed(others))]

    def _memory_lines(self, spec: ModelSpec, locale: str) -> list[str]:
        """The memory mode, its features, the VAE override and the samplers diffusers lacks (on a thread:
        it asks the device what is free and reads the dialect's file)."""
        status = self.bot.service.memory_status(spec)
        missing = tuple(getattr(load_dialect(spec.dialect), "missing_samplers", ()))
        return memory_lines(spec, status, locale, missing)

    @app_commands.command(name="switch", description="Admins: load a model and make it the active one")
    @app_commands.describe(
        name="Model to switch to",
        everywhere="Bot admins: the default of every server that has not chosen its own",
    )
    async def switch(self, interaction: discord.Interaction, name: str, everywhere: bool = False) -> None:
        # A server's own model: its admins. The global default (also what a DM switches): bot admins.
        guild_id = None if everywhere else guild_key(interaction)
        if guild_id is None:
            require_bot_admin(interaction)
        else:
            require_server_admin(interaction)
        models = self.bot.config.models
        if name not in models:
            raise UserError("unknown_model", value=name, options=", ".join(models))
        locale = locale_of(interaction)
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            previous = await self.bot.service.active_model(guild_id)
            if name == previous:
                await reply.send(render("model_already_active", locale, model=name))
                return
            # Local mode loads it in this process, after the running job; the pool's workers load it themselves.
            pool = self.bot.service.executor_status().mode == "redis"
            await reply.send(render("model_switching" if pool else "model_loading", locale, model=name))
        stages: asyncio.Queue[ModelLoading | None] = asyncio.Queue()

        def on_event(event: Event) -> None:
            if isinstance(event, ModelLoading) and event.model == name:
                stages.put_nowait(event)

        unlisten = self.bot.service.events.listen(on_event)
        reporter = asyncio.create_task(self._report_loading(interaction, stages, locale))
        try:
            await self.bot.service.switch_model(name, owner_key(interaction.user), guild_id)
        except UserError as error:
            text = render(error.key, locale, **error.params)
        else:
            text = render("model_switched", locale, model=name, previous=previous)
        finally:
            unlisten()
            stages.put_nowait(None)
            await reporter
        await interaction.edit_original_response(content=text)

    async def _report_loading(
        self, interaction: discord.Interaction, stages: asyncio.Queue[ModelLoading | None], locale: str
    ) -> None:
        """Edit the loading message with the load's stages (at most one edit per LOADING_EDIT_INTERVAL)
        until None arrives."""
        last: float | None = None
        while (event := await stages.get()) is not None:
            now = time.monotonic()
            if last is not None and now - last < LOADING_EDIT_INTERVAL:
                continue
            last = now
            text = render(
                "model_loading_stage", locale, model=event.model, stage=event.stage, done=event.done, total=event.total
            )
            try:
                await interaction.edit_original_response(content=text)
            except discord.HTTPException:
                log.warning("could not show the loading progress of %s", event.model)

    @switch.autocomplete("name")
    @info.autocomplete("name")
    async def _model_names(self, interaction: discord.Interaction, current: str) -> list[Choice]:
        return filter_choices([(name, name) for name in self.bot.config.models], current)

    @app_commands.command(name="quota", description="Admins: set, show or reset a user's or role's limits")
    @app_commands.describe(
        user="Whose limits (or give a role)",
        role="Whose limits (or give a user)",
        images_per_day="Images per rolling 24 hours (0: unlimited)",
        max_queued="Jobs waiting at once (0: unlimited)",
        cooldown="Seconds between two requests",
        reset="Remove the override: the role's or configured limits apply again",
    )
    async def quota(
        self,
        interaction: discord.Interaction,
        user: discord.User | None = None,
        role: discord.Role | None = None,
        images_per_day: app_commands.Range[int, 0, 100000] | None = None,
        max_queued: app_commands.Range[int, 0, 1000] | None = None,
        cooldown: app_commands.Range[int, 0, 86400] | None = None,
        reset: bool = False,
    ) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            text = await self.quota_action(interaction, user, role, images_per_day, max_queued, cooldown, reset)
            await reply.send(text, allowed_mentions=discord.AllowedMentions.none())

    async def quota_action(
        self,
        interaction: discord.Interaction,
        user: discord.User | None,
        role: discord.Role | None,
        images_per_day: int | None,
        max_queued: int | None,
        cooldown: int | None,
        reset: bool,
    ) -> str:
        """Set, show or reset the limits (admin rights checked here); the answer."""
        if (user is None) == (role is None):
            raise UserError("quota_target")
        if role is None:
            require_bot_admin(interaction)  # a user's limits apply in every server
        elif str(role.guild.id) != guild_key(interaction):
            raise UserError("admin_only")  # a role of another server
        else:
            require_server_admin(interaction)
        locale = locale_of(interaction)
        service = self.bot.service
        scope: Literal["user", "role"] = "user" if user is not None else "role"
        key = owner_key(user) if user is not None else str(cast(discord.Role, role).id)
        target = cast("discord.User | discord.Role", user or role).mention
        actor, guild_id = owner_key(interaction.user), guild_key(interaction)
        limits: QuotaLimits | None
        if reset:
            cleared = await service.clear_quota(scope, key, actor, guild_id=guild_id)
            text = render("quota_cleared" if cleared else "quota_none", locale, target=target)
        elif images_per_day is None and max_queued is None and cooldown is None:
            limits = await service.quota_override(scope, key)
            text = quota_text(limits, target, locale)
        else:
            limits = await service.set_quota(
                scope,
                key,
                actor,
                images_per_day=images_per_day,
                max_queued=max_queued,
                cooldown_seconds=None if cooldown is None else float(cooldown),
                guild_id=guild_id,
            )
            text = quota_text(limits, target, locale)
        return text


def quota_text(limits: QuotaLimits | None, target: str, locale: str) -> str:
    if limits is None:
        return render("quota_none", locale, target=target)
    unlimited = render("quota_unlimited", locale)
    text = render(
        "quota_limits",
        locale,
        images=unlimited if limits.images_per_day is None else limits.images_per_day,
        queued=unlimited if limits.max_queued is None else limits.max_queued,
        cooldown=format_wait(limits.cooldown_seconds),
    )
    return render("quota_set", locale, target=target, limits=text)


async def setup(bot: AnimeBot) -> None:
    await bot.add_cog(Models(bot))
