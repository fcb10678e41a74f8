"""The Discord bot: a commands.Bot around the GenerationService. Constructing it does no network I/O;
setup_hook starts the service, loads the cogs (which register their persistent buttons) and syncs the command
tree only when it changed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import discord
from discord.ext import commands

from bot.config import Config
from bot.core.collector import CollectorPolicy
from bot.core.executor import LocalExecutor
from bot.core.service import GenerationService
from bot.discord_app.delivery import Delivery
from bot.discord_app.screening import preload_tagger
from bot.discord_app.translator import CommandTranslator
from bot.discord_app.views import result_view

log = logging.getLogger(__name__)

COGS = (
    "cogs.errors",
    "cogs.generate",
    "cogs.results",
    "cogs.account",
    "cogs.queue",
    "cogs.models",
    "cogs.describe",
    "cogs.stats",
    "cogs.safety",
    "cogs.loras",
)
SYNC_KEY = "command_tree_hash"


def intents() -> discord.Intents:
    """Guilds (channels, roles) and guild reactions (🔄 rerolls); no message content, no members."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_reactions = True
    return wanted


def shard_options(config: Config) -> dict[str, Any] | None:
    """[discord] shards as AutoShardedBot's options: None for one connection (0, the default); "auto": as many
    shards as Discord recommends (shard_count None); N: N shards."""
    shards = config.discord.shards
    if shards == 0:
        return None
    return {"shard_count": None if shards == "auto" else shards}


class AnimeBot(commands.Bot):
    """The bot: a plain commands.Bot (one gateway connection); ShardedAnimeBot is the same on
    commands.AutoShardedBot. Make one with create_bot, which picks by [discord] shards."""

    def __init__(
        self,
        config: Config,
        service: GenerationService | None = None,
        *,
        freeze_gc: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(
            **options,
            command_prefix=commands.when_mentioned,
            intents=intents(),
            help_command=None,
            # Every message echoes what users typed (prompts): by default nothing in it pings anyone. A
            # message that addresses a user allows exactly that user (Delivery.post).
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.config = config
        self._owns_service = service is None
        self.service = service or GenerationService(config)
        self.delivery: Delivery | None = None  # set in setup_hook
        self.tagger_preload: asyncio.Task[None] | None = None  # set in setup_hook
        self.synced = False  # whether the last setup_hook registered commands with Discord
        self.freeze_gc = freeze_gc
        self.collector: CollectorPolicy | None = None  # set in setup_hook when freeze_gc

    @property
    def deliveries(self) -> Delivery:
        assert self.delivery is not None, "setup_hook first"
        return self.delivery

    async def setup_hook(self) -> None:
        if self._owns_service:
            await self.service.start()
        if self.freeze_gc:
            self.collector = watch_model_loads(self.service)
        self.delivery = Delivery(self, self.service, result_view)
        # The tagger, loaded in the background (on a thread) when results are rated; close() cancels it.
        self.tagger_preload = self.delivery.spawn(self._preload_tagger(), "tagger-preload")
        for name in COGS:
            await self.load_extension(name)
        await self.tree.set_translator(CommandTranslator())  # before the sync: Japanese descriptions
        await self.sync_commands()
        if self.collector is not None:
            self.collector.startup()

    async def _preload_tagger(self) -> None:
        await preload_tagger(self.service)
        if self.collector is not None:  # its objects live as long as the process, like a model's
            self.collector.model_loaded("the tagger")

    async def on_ready(self) -> None:
        log.info("logged in as %s", self.user)
        self.deliveries.spawn(self.deliveries.deliver_pending(), "deliver-pending")  # close() cancels it

    async def tree_payload(self) -> list[dict[str, Any]]:
        """The global commands as Discord receives them (with the translator's localizations)."""
        translator = self.tree.translator
        if translator is None:
            return [command.to_dict(self.tree) for command in self.tree.get_commands()]
        return [await command.get_translated_payload(self.tree, translator) for command in self.tree.get_commands()]

    async def tree_hash(self) -> str:
        payload = await self.tree_payload()
        text = json.dumps({"guilds": self.config.discord.guild_ids, "commands": payload}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    async def sync_commands(self) -> bool:
        """Register the commands with Discord if they changed since the last registration."""
        digest = await self.tree_hash()
        if await self.service.state(SYNC_KEY) == digest:
            self.synced = False
            return False
        guild_ids = self.config.discord.guild_ids
        if guild_ids:
            for guild_id in guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        await self.service.set_state(SYNC_KEY, digest)
        self.synced = True
        return True

    async def close(self) -> None:
        if self.delivery is not None:
            await self.delivery.cancel_all()  # what is left is delivered at the next start (jobs.undelivered)
        try:
            await super().close()
        finally:
            self.delivery = None
            if self._owns_service:
                await self.service.close()
                self._owns_service = False


class ShardedAnimeBot(AnimeBot, commands.AutoShardedBot):
    """AnimeBot over several gateway connections (discord.py's AutoShardedBot), for bots in thousands of
    servers. commands.Bot and commands.AutoShardedBot only join BotBase to a client class, so this MRO puts
    AutoShardedClient's connection handling under AnimeBot's code: the same bot, sharded."""


def watch_model_loads(service: GenerationService) -> CollectorPolicy:
    """The garbage-collector policy of the long-running bot (bot/core/collector.py), told by the in-process GPU
    worker when a model load finished (redis mode: the models load in the worker processes)."""
    collector = CollectorPolicy()
    executor = service.executor
    if isinstance(executor, LocalExecutor):
        executor.worker.on_model_loaded = collector.model_loaded
    return collector


def create_bot(config: Config, service: GenerationService | None = None, *, freeze_gc: bool = False) -> AnimeBot:
    """The bot, ready for `bot.start(token)`; nothing touches the network before that. A service
    passed in belongs to the caller (started and closed by it); otherwise the bot owns one.
    `freeze_gc`: the garbage-collector policy (bot/core/collector.py) for the long-running `animebot run`.
    [discord] shards "auto" or N > 0 gives a ShardedAnimeBot (an AutoShardedBot)."""
    sharding = shard_options(config)
    if sharding is None:
        return AnimeBot(config, service, freeze_gc=freeze_gc)
    return ShardedAnimeBot(config, service, freeze_gc=freeze_gc, **sharding)
