"""Settings in the store: each guild's active model (guild_settings) and the bot's own small state
(bot_state: the queue's pause, the command tree's hash...)."""

from __future__ import annotations

import time

from bot.core.store import Store

GLOBAL = "*"  # guild_settings row of the global default model


class SettingsRepository:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def active_models(self, guild_id: str | None) -> dict[str, str]:
        """The model chosen for the guild and the global default, those that are set, keyed by guild id
        (GLOBAL for the default). One query: autocomplete asks on every keystroke."""
        rows = await self.store.fetchall(
            "SELECT guild_id, active_model FROM guild_settings WHERE guild_id IN (?, ?)", (guild_id or GLOBAL, GLOBAL)
        )
        return {str(row["guild_id"]): str(row["active_model"]) for row in rows}

    async def set_active_model(self, guild_id: str | None, name: str) -> None:
        """The guild's model (None: the global default)."""
        await self.store.execute(
            "INSERT INTO guild_settings (guild_id, active_model, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET active_model = excluded.active_model, "
            "updated_at = excluded.updated_at",
            (guild_id or GLOBAL, name, time.time()),
        )

    async def state(self, key: str) -> str | None:
        value = await self.store.scalar("SELECT value FROM bot_state WHERE key = ?", (key,))
        return None if value is None else str(value)

    async def set_state(self, key: str, value: str) -> None:
        await self.store.execute(
            "INSERT INTO bot_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
