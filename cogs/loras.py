"""/lora list (the LoRAs of the active model's family that may be used in this channel) and /lora reload (bot
admins: read the LoRA folder again; audited). The library itself is the service's (inference/loras.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import UserError
from bot.core.messages import render
from bot.discord_app.acknowledge import InTime
from bot.discord_app.interactions import bot_of, guild_key, locale_of
from bot.discord_app.permissions import channel_allows_nsfw, is_bot_admin, owner_key
from inference.loras import LoraEntry

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot

MESSAGE_LIMIT = 2000  # Discord's limit for a message's content
PROBLEMS_SHOWN = 10  # left-out files quoted by /lora reload


class Loras(commands.GroupCog, group_name="lora", group_description="LoRAs: styles and characters added to a model"):
    def __init__(self, bot: AnimeBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list", description="The LoRAs of the active model that can be used here")
    async def list_loras(self, interaction: discord.Interaction) -> None:
        async with InTime(interaction, ephemeral=True) as reply:  # in time, however slow the store
            model = await self.bot.service.active_model(guild_key(interaction))
            family = self.bot.config.models[model].family
            nsfw_allowed = channel_allows_nsfw(interaction.channel)
            entries = [e for e in self.bot.service.loras.for_family(family) if nsfw_allowed or not e.nsfw]
            await reply.send(list_text(entries, model, locale_of(interaction)))

    @app_commands.command(name="reload", description="Bot admins: read the LoRA folder again")
    async def reload(self, interaction: discord.Interaction) -> None:
        if not is_bot_admin(bot_of(interaction).config.discord, interaction.user):
            raise UserError("admin_only")
        locale = locale_of(interaction)
        async with InTime(interaction, ephemeral=True) as reply:
            library = await self.bot.service.reload_loras()
            await self.bot.service.audit(
                owner_key(interaction.user),
                guild_key(interaction),
                "lora.reload",
                {"loras": len(library.entries), "left_out": len(library.problems)},
            )
            text = render("lora_reloaded", locale, count=len(library.entries), problems=len(library.problems))
            if library.problems:
                shown = "\n".join(f"- {line}" for line in library.problems[:PROBLEMS_SHOWN])
                if len(library.problems) > PROBLEMS_SHOWN:
                    shown += "\n" + render("lora_list_more", locale, count=len(library.problems) - PROBLEMS_SHOWN)
                text += "\n" + render("lora_reload_problems", locale, problems=shown)
            await reply.send(text[:MESSAGE_LIMIT])


def list_text(entries: list[LoraEntry], model: str, locale: str) -> str:
    """The list, cut (with "...and N more") to one message."""
    if not entries:
        return render("lora_list_empty", locale, model=model)
    lines = [render("lora_list_header", locale, model=model, count=len(entries))]
    for index, entry in enumerate(entries):
        triggers = ""
        if entry.triggers and entry.trigger_position != "none":
            triggers = render("lora_list_triggers", locale, triggers=", ".join(entry.triggers))
        nsfw = render("lora_list_nsfw", locale) if entry.nsfw else ""
        line = render(
            "lora_list_line", locale, name=entry.name, weight=f"{entry.weight:g}", triggers=triggers, nsfw=nsfw
        )
        more = render("lora_list_more", locale, count=len(entries) - index)
        if sum(len(x) + 1 for x in lines) + len(line) + len(more) + 2 > MESSAGE_LIMIT:
            lines.append(more)
            break
        lines.append(line)
    return "\n".join(lines)


async def setup(bot: AnimeBot) -> None:
    await bot.add_cog(Loras(bot))
