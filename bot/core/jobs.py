"""Job records in the store: the lifecycle queued → running → done | failed | cancelled, images,
deliveries and history. Every state change is a conditional UPDATE, so it happens at most once."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.policy import Verdict
from bot.prompts.requests import GenerationRequest, ResolvedRequest
from inference.types import GenerationParams

MAX_ATTEMPTS = 3  # starts of one job before a crash-restart cycle gives it up


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class ImageRecord:
    job_id: int
    index: int
    seed: int
    path: str  # relative to the data directory
    width: int
    height: int
    parameters: str


@dataclass(frozen=True)
class JobOrigin:
    """Who asked for a job, and where its result goes."""

    owner_id: str  # "discord:<snowflake>" or "cli:<name>"
    owner_name: str = ""
    guild_id: str | None = None  # None for DMs and the CLI
    channel_id: str | None = None
    locale: str | None = None  # the asker's message language; None: none known (the CLI)


@dataclass(frozen=True)
class JobRecord:
    id: int
    owner_id: str
    guild_id: str | None
    channel_id: str | None
    model: str
    request: GenerationRequest
    params: GenerationParams
    state: JobState
    error: str | None
    attempts: int
    reroll_of: int | None
    cancelled_by: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    delivered: bool
    locale: str | None = None  # the asker's message language, for a delivery after a restart
    verdict: Verdict | None = None  # the content policy's decision at submit; None: stored before v3


def request_to_json(request: GenerationRequest) -> str:
    return json.dumps(asdict(request), ensure_ascii=False)


def request_from_json(text: str) -> GenerationRequest:
    data = json.loads(text)
    data["choices"] = PromptChoices(**data["choices"])
    return GenerationRequest(**data)


def params_to_json(params: GenerationParams) -> str:
    return json.dumps(asdict(params), ensure_ascii=False)


def params_from_json(text: str) -> GenerationParams:
    data = json.loads(text)
    data["seeds"] = tuple(data["seeds"])
    return GenerationParams(**data)


_JOB_COLUMNS = """
    j.id, j.owner_id, j.guild_id, j.channel_id, j.model, j.request, j.params, j.state, j.error, j.attempts,
    j.reroll_of, j.cancelled_by, j.created_at, j.started_at, j.finished_at, j.locale, j.verdict,
    EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id) AS delivered
"""


def _job(row: Any) -> JobRecord:
    return JobRecord(
        id=row["id"],
        owner_id=row["owner_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        model=row["model"],
        request=request_from_json(row["request"]),
        params=params_from_json(row["params"]),
        state=JobState(row["state"]),
        error=row["error"],
        attempts=row["attempts"],
        reroll_of=row["reroll_of"],
        cancelled_by=row["cancelled_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        delivered=bool(row["delivered"]),
        locale=row["locale"],
        verdict=Verdict.from_json(row["verdict"]),
    )


def _image(row: Any) -> ImageRecord:
    return ImageRecord(
        row["job_id"], row["idx"], row["seed"], row["path"], row["width"], row["height"], row["parameters"]
    )


class JobRepository:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- writes (call inside store.transaction() when combined with other writes) -----------------

    async def ensure_user(self, user_id: str, display_name: str = "") -> None:
        await self.store.execute(
            "INSERT INTO users (id, display_name, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name WHERE excluded.display_name != ''",
            (user_id, display_name, time.time()),
        )

    async def insert(self, resolved: ResolvedRequest, origin: JobOrigin, reroll_of: int | None = None) -> int:
        return await self.store.insert(
            "INSERT INTO jobs (owner_id, guild_id, channel_id, model, request, params, image_count, state, "
            "reroll_of, created_at, locale, verdict) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
            (
                origin.owner_id,
                origin.guild_id,
                origin.channel_id,
                resolved.spec.name,
                request_to_json(resolved.request),
                params_to_json(resolved.params),
                resolved.params.count,
                reroll_of,
                time.time(),
                origin.locale,
                resolved.verdict.to_json(),
            ),
        )

    async def claim(self, job_id: int) -> bool:
        """queued → running. False if the job is no longer queued (cancelled meanwhile)."""
        changed = await self.store.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ? "
            "WHERE id = ? AND state = 'queued'",
            (time.time(), job_id),
        )
        return changed == 1

    async def finish(self, job_id: int, images: list[ImageRecord]) -> bool:
        """running → done with its images, once. False (and nothing written) if it was not running."""
        async with self.store.transaction():
            changed = await self.store.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, error = NULL WHERE id = ? AND state = 'running'",
                (time.time(), job_id),
            )
            if changed != 1:
                return False
            for image in images:
                await self.store.execute(
                    "INSERT INTO images (job_id, idx, seed, path, width, height, parameters) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, image.index, image.seed, image.path, image.width, image.height, image.parameters),
                )
            return True

    async def fail(self, job_id: int, message: str) -> bool:
        """queued/running → failed, once; its quota usage is given back."""
        return await self._end_unfinished(job_id, JobState.FAILED, "error", message)

    async def cancel(self, job_id: int, by: str) -> bool:
        """queued/running → cancelled, once; its quota usage is given back."""
        return await self._end_unfinished(job_id, JobState.CANCELLED, "cancelled_by", by)

    async def _end_unfinished(
        self, job_id: int, state: JobState, column: Literal["error", "cancelled_by"], value: str
    ) -> bool:
        async with self.store.transaction():
            changed = await self.store.execute(
                f"UPDATE jobs SET state = ?, {column} = ?, finished_at = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state.value, value, time.time(), job_id),
            )
            if changed == 1:
                await self.store.execute("DELETE FROM usage WHERE job_id = ?", (job_id,))
            return changed == 1

    async def request_cancel(self, job_id: int, by: str) -> None:
        """Record who asked to cancel a running job; the worker stops it (on_cancelled), or the next start
        cancels it if the process dies first."""
        await self.store.execute(
            "UPDATE jobs SET cancelled_by = ? WHERE id = ? AND state IN ('queued', 'running')", (by, job_id)
        )

    async def requeue_interrupted(self) -> list[int]:
        """At start: jobs left running by a process that died go back to the queue (their order kept).
        A job someone had asked to cancel is cancelled instead. A job that was already started
        MAX_ATTEMPTS times is failed: it may be what kills the process (driver crash, the kernel's OOM
        killer), and must not crash-loop the bot."""
        async with self.store.transaction():
            rows = await self.store.fetchall(
                "SELECT id, attempts, cancelled_by FROM jobs WHERE state = 'running' ORDER BY id"
            )
            requeued = []
            for row in rows:
                if row["cancelled_by"] is not None:
                    await self.cancel(row["id"], row["cancelled_by"])
                elif row["attempts"] >= MAX_ATTEMPTS:
                    await self.fail(row["id"], "This job stopped the bot every time it ran, so it was given up.")
                else:
                    await self.store.execute(
                        "UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ?", (row["id"],)
                    )
                    requeued.append(row["id"])
        return requeued

    async def mark_delivered(self, job_id: int, target: str = "") -> bool:
        """Record that the result reached the user. False if it already had (never deliver twice)."""
        changed = await self.store.execute(
            "INSERT INTO deliveries (job_id, delivered_at, target) VALUES (?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
            (job_id, time.time(), target),
        )
        return changed == 1

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: int) -> JobRecord | None:
        row = await self.store.fetchone(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = ?", (job_id,))
        return None if row is None else _job(row)

    async def queued(self) -> list[JobRecord]:
        rows = await self.store.fetchall(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state = 'queued' ORDER BY j.id")
        return [_job(row) for row in rows]

    async def unfinished(self) -> list[JobRecord]:
        """Jobs waiting or running, oldest first."""
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state IN ('queued', 'running') ORDER BY j.id"
        )
        return [_job(row) for row in rows]

    async def images(self, job_id: int) -> list[ImageRecord]:
        rows = await self.store.fetchall("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        return [_image(row) for row in rows]

    async def undelivered(self) -> list[JobRecord]:
        """Finished jobs (done or failed) whose result has not reached the user yet."""
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state IN ('done', 'failed') "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id) ORDER BY j.id"
        )
        return [_job(row) for row in rows]

    async def history(self, owner_id: str, page: int = 0, per_page: int = 10) -> tuple[list[JobRecord], int]:
        """A user's jobs, newest first, one page; and the total count."""
        total = int(await self.store.scalar("SELECT COUNT(*) FROM jobs WHERE owner_id = ?", (owner_id,)))
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.owner_id = ? ORDER BY j.id DESC LIMIT ? OFFSET ?",
            (owner_id, per_page, page * per_page),
        )
        return [_job(row) for row in rows], total
