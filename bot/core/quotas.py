"""Per-user limits: images per rolling 24 hours, jobs waiting at once, cooldown between requests.

Limits come from the config and can be overridden by admins per user or per role (a user gets their
own override if there is one, else the most generous of their roles', else the default). Checking
and recording happen inside the caller's store transaction, so concurrent submissions cannot both
pass a check that only one of them fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.core.errors import UserError
from bot.core.jobs import JobRepository
from bot.core.store import Store

WINDOW_SECONDS = 24 * 3600  # rolling: each image counts for 24 hours after it was asked for


@dataclass(frozen=True)
class QuotaLimits:
    images_per_day: int | None  # None: unlimited
    max_queued: int | None
    cooldown_seconds: float = 0.0


@dataclass(frozen=True)
class QuotaStatus:
    limits: QuotaLimits
    used: int  # images in the last 24 hours
    remaining: int | None
    resets_at: float | None  # when the next image frees up (None: nothing counted)
    queued: int  # jobs waiting or running
    cooldown_left: float


def format_wait(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _most_generous(limits: Sequence[QuotaLimits]) -> QuotaLimits:
    """Field by field, the most generous of several (non-empty) limits; None (unlimited) beats any count."""

    def best(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else max(v for v in values if v is not None)

    return QuotaLimits(
        images_per_day=best([limit.images_per_day for limit in limits]),
        max_queued=best([limit.max_queued for limit in limits]),
        cooldown_seconds=min(limit.cooldown_seconds for limit in limits),
    )


class Quotas:
    def __init__(
        self,
        store: Store,
        default: QuotaLimits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.default = default
        self.clock = clock
        self.jobs = JobRepository(store)  # how many jobs a user has waiting or running

    async def override(self, scope: str, target: str) -> QuotaLimits | None:
        """The limits one user's or role's override gives (unset fields: the defaults); None if none."""
        found = await self._overrides(scope, [target])
        return found[0] if found else None

    async def _overrides(self, scope: str, targets: Sequence[str]) -> list[QuotaLimits]:
        """The overrides of those of `targets` that have one, in one query."""
        if not targets:
            return []
        rows = await self.store.fetchall(
            "SELECT images_per_day, max_queued, cooldown_seconds FROM quota_overrides "
            f"WHERE scope = ? AND target_id IN ({', '.join('?' * len(targets))})",
            (scope, *targets),
        )
        d = self.default
        return [
            QuotaLimits(
                images_per_day=d.images_per_day if row["images_per_day"] is None else _unlimited(row["images_per_day"]),
                max_queued=d.max_queued if row["max_queued"] is None else _unlimited(row["max_queued"]),
                cooldown_seconds=d.cooldown_seconds if row["cooldown_seconds"] is None else row["cooldown_seconds"],
            )
            for row in rows
        ]

    async def limits_for(self, user_id: str, role_ids: Sequence[str] = ()) -> QuotaLimits:
        own = await self.override("user", user_id)
        if own is not None:
            return own
        roles = await self._overrides("role", role_ids)
        return _most_generous(roles) if roles else self.default

    async def set_override(
        self,
        scope: Literal["user", "role"],
        target_id: str,
        images_per_day: int | None,
        max_queued: int | None,
        cooldown_seconds: float | None,
        set_by: str,
    ) -> None:
        """Store an override; 0 (counts) means unlimited. A field given as None keeps its value: the
        configured default in a new override, what was set before in an existing one."""
        await self.store.execute(
            "INSERT INTO quota_overrides (scope, target_id, images_per_day, max_queued, cooldown_seconds, set_by,"
            " set_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, target_id) DO UPDATE SET"
            " images_per_day = COALESCE(excluded.images_per_day, images_per_day),"
            " max_queued = COALESCE(excluded.max_queued, max_queued),"
            " cooldown_seconds = COALESCE(excluded.cooldown_seconds, cooldown_seconds),"
            " set_by = excluded.set_by, set_at = excluded.set_at",
            (scope, target_id, images_per_day, max_queued, cooldown_seconds, set_by, self.clock()),
        )

    async def clear_override(self, scope: Literal["user", "role"], target_id: str) -> bool:
        return (
            await self.store.execute(
                "DELETE FROM quota_overrides WHERE scope = ? AND target_id = ?", (scope, target_id)
            )
            == 1
        )

    async def status(self, user_id: str, role_ids: Sequence[str] = ()) -> QuotaStatus:
        limits = await self.limits_for(user_id, role_ids)
        now = self.clock()
        rows = await self.store.fetchall(
            "SELECT images, at FROM usage WHERE user_id = ? AND at > ? ORDER BY at", (user_id, now - WINDOW_SECONDS)
        )
        used = sum(row["images"] for row in rows)
        queued = await self.jobs.unfinished_count(user_id)
        last = max((row["at"] for row in rows), default=None)
        cooldown_left = 0.0 if last is None else max(0.0, last + limits.cooldown_seconds - now)
        remaining = None if limits.images_per_day is None else max(0, limits.images_per_day - used)
        resets_at = rows[0]["at"] + WINDOW_SECONDS if rows else None
        if limits.images_per_day is not None and used >= limits.images_per_day:
            # The moment enough old images leave the window for one more.
            freed = used
            for row in rows:
                freed -= row["images"]
                if freed < limits.images_per_day:
                    resets_at = row["at"] + WINDOW_SECONDS
                    break
        return QuotaStatus(limits, used, remaining, resets_at, queued, cooldown_left)

    async def check(self, user_id: str, images: int, role_ids: Sequence[str] = ()) -> None:
        """Raise UserError if `images` more would break a limit. Call inside a store transaction."""
        status = await self.status(user_id, role_ids)
        limits = status.limits
        now = self.clock()
        if limits.max_queued is not None and status.queued >= limits.max_queued:
            raise UserError("quota_queued", limit=limits.max_queued)
        if status.cooldown_left > 0:
            raise UserError("quota_cooldown", wait=format_wait(status.cooldown_left))
        if status.remaining is not None and images > status.remaining:
            wait = format_wait((status.resets_at or now) - now)
            raise UserError(
                "quota_daily", used=status.used, limit=limits.images_per_day, remaining=status.remaining, wait=wait
            )

    async def record(self, user_id: str, job_id: int, images: int) -> None:
        await self.store.execute(
            "INSERT INTO usage (user_id, job_id, images, at) VALUES (?, ?, ?, ?)",
            (user_id, job_id, images, self.clock()),
        )


def _unlimited(value: int) -> int | None:
    return None if value == 0 else value
