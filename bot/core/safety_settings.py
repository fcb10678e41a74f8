"""Each server's own settings of the rating check (the guild_safety table; /safety) and how they combine with
the config's [safety] (docs/content-policy.md, section 5).

A server admin may make the check stricter than the config (turn it on where the bot owner left it off,
withhold or spoiler `sensitive` results the config posts), never looser, unless the bot owner allows it
with [safety] servers_may_loosen = true. The stored choice is what the admin asked for; the effective
settings are computed on every read, so a bot owner who tightens the config later tightens every server
whose stored choice was looser (it is not deleted: it applies again if the config is loosened again)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

from bot.core.store import Store

Sensitive = Literal["spoiler", "withhold", "post"]
SENSITIVE_CHOICES: tuple[Sensitive, ...] = ("post", "spoiler", "withhold")  # loosest first
STRICTNESS: dict[str, int] = {choice: rank for rank, choice in enumerate(SENSITIVE_CHOICES)}


@dataclass(frozen=True)
class SafetyChoice:
    """What one server's admins chose; None: the config's value."""

    sensitive: Sensitive | None = None
    rate_results: bool | None = None
    updated_by: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True)
class EffectiveSafety:
    """The rating check as it applies in one server (or in DMs and everywhere without a choice)."""

    rate_results: bool
    sensitive: Sensitive
    choice: SafetyChoice | None = None  # the server's stored choice, if any
    clamped: bool = False  # the choice was looser than the config allows: the config's value applies


def is_looser(config_rate: bool, config_sensitive: Sensitive, choice: SafetyChoice) -> bool:
    """Whether `choice` would post more than the config: the check off where it is on, or `sensitive`
    results handled more openly (post < spoiler < withhold)."""
    if choice.rate_results is False and config_rate:
        return True
    return choice.sensitive is not None and STRICTNESS[choice.sensitive] < STRICTNESS[config_sensitive]


def effective(
    config_rate: bool, config_sensitive: Sensitive, may_loosen: bool, choice: SafetyChoice | None
) -> EffectiveSafety:
    """The settings a server gets: its choice where it is at least as strict as the config (or where the
    bot owner lets servers loosen it), else the config's value for that field."""
    if choice is None:
        return EffectiveSafety(config_rate, config_sensitive)
    rate = config_rate if choice.rate_results is None else choice.rate_results
    sensitive = config_sensitive if choice.sensitive is None else choice.sensitive
    clamped = False
    if not may_loosen:
        if config_rate and not rate:
            rate, clamped = True, True
        if STRICTNESS[sensitive] < STRICTNESS[config_sensitive]:
            sensitive, clamped = config_sensitive, True
    return EffectiveSafety(rate, sensitive, choice, clamped)


class SafetyRepository:
    """The guild_safety table, and the withheld jobs a server's admins (or an owner) may look at."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def choice(self, guild_id: str) -> SafetyChoice | None:
        row = await self.store.fetchone(
            "SELECT sensitive, rate_results, updated_by, updated_at FROM guild_safety WHERE guild_id = ?",
            (guild_id,),
        )
        if row is None:
            return None
        rate = row["rate_results"]
        return SafetyChoice(
            cast("Sensitive | None", row["sensitive"]),
            None if rate is None else bool(rate),
            str(row["updated_by"]),
            float(row["updated_at"]),
        )

    async def set_choice(
        self, guild_id: str, sensitive: Sensitive | None, rate_results: bool | None, actor: str
    ) -> None:
        """Store the server's choice; a field given as None keeps its stored value (the config's at first)."""
        await self.store.execute(
            "INSERT INTO guild_safety (guild_id, sensitive, rate_results, updated_by, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id) DO UPDATE SET "
            "sensitive = COALESCE(excluded.sensitive, guild_safety.sensitive), "
            "rate_results = COALESCE(excluded.rate_results, guild_safety.rate_results), "
            "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            (guild_id, sensitive, None if rate_results is None else int(rate_results), actor, time.time()),
        )

    async def clear_choice(self, guild_id: str) -> bool:
        """Forget the server's choice (the config applies again); False if it had none."""
        return bool(await self.store.execute("DELETE FROM guild_safety WHERE guild_id = ?", (guild_id,)))

    async def any_rating_on(self) -> bool:
        """Whether some server turned the check on (the tagger is then needed even if the config has it off)."""
        return await self.store.scalar("SELECT 1 FROM guild_safety WHERE rate_results = 1 LIMIT 1") is not None

    async def withheld_job_ids(
        self, *, guild_id: str | None = None, owner_id: str | None = None, limit: int = 10
    ) -> list[int]:
        """The newest withheld jobs of a server, or of an owner (anywhere), newest first."""
        if guild_id is not None:
            rows = await self.store.fetchall(
                "SELECT id FROM jobs WHERE guild_id = ? AND withheld IS NOT NULL ORDER BY id DESC LIMIT ?",
                (guild_id, limit),
            )
        else:
            rows = await self.store.fetchall(
                "SELECT id FROM jobs WHERE owner_id = ? AND withheld IS NOT NULL ORDER BY id DESC LIMIT ?",
                (owner_id, limit),
            )
        return [int(row["id"]) for row in rows]
