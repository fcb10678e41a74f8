"""The audit log in the store: who did what admin action, where, with what detail."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.core.store import Store


@dataclass(frozen=True)
class AuditEntry:
    at: float
    actor_id: str
    guild_id: str | None
    action: str
    detail: dict[str, Any]


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, actor: str, guild_id: str | None, action: str, detail: Mapping[str, object]) -> None:
        await self.store.execute(
            "INSERT INTO audit_log (at, actor_id, guild_id, action, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), actor, guild_id, action, json.dumps(detail, ensure_ascii=False)),
        )

    async def entries(self, limit: int = 100) -> list[AuditEntry]:
        """The oldest `limit` entries first (what an admin reads back)."""
        rows = await self.store.fetchall(
            "SELECT at, actor_id, guild_id, action, detail FROM audit_log ORDER BY id LIMIT ?", (limit,)
        )
        return [
            AuditEntry(row["at"], row["actor_id"], row["guild_id"], row["action"], json.loads(row["detail"]))
            for row in rows
        ]
