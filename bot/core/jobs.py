"""Job records in the store: the lifecycle queued → running → done | failed | cancelled, the queue's fair
order, images, deliveries and history. Every state change is a conditional UPDATE, so it happens at most
once, whichever process or worker asks.

Fair order (the rule is in bot/core/queue.py's doc): a waiting job's `queue_rank` column holds its owner's
served count plus its place among the owner's waiting jobs, kept exact by every write below, so the next
job is the first entry of the partial index jobs_waiting_in_order and a position is a count along it.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.policy import Verdict
from bot.prompts.requests import GenerationRequest, JobKind, ResolvedRequest
from inference.types import GenerationParams, HiresFix, LoraWeight, SourceImage

MAX_ATTEMPTS = 3  # starts of one job before a crash-restart cycle gives it up
GAVE_UP_BOT = "This job stopped the bot every time it ran, so it was given up."
GAVE_UP_WORKER = "This job stopped its worker every time it ran, so it was given up."
log = logging.getLogger(__name__)

UNREADABLE = "This job's stored request could not be read, so it was given up."


class UnreadableJob(Exception):
    """claim_next met a job whose stored row its models cannot read (damaged by hand or by a bug): that job
    is failed (committed) instead of claimed, so it cannot stop every later claim. Claim again."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id}: {UNREADABLE}")
        self.job_id = job_id


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
    rating: str | None = None  # the tagger's rating (general, sensitive, questionable, explicit); None: not rated
    rating_score: float | None = None


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
    withheld: str | None = None  # not posted by the rating check: the rating, or "unchecked" (the check failed)
    parent_id: int | None = None  # vary/upscale: the job whose image this one started from
    kind: JobKind = "txt2img"


@dataclass(frozen=True, slots=True)
class UnfinishedJob:
    """A job waiting or running, as a restart lists it: who asked, where its result goes, in what language."""

    id: int
    owner_id: str
    channel_id: str | None
    locale: str | None
    state: JobState


@dataclass(frozen=True)
class Dispatch:
    """A running job and whom it was handed to: the worker (claimed_by), the dispatch's token (None: claimed by
    an in-process worker), the attempt (its count of starts) and who asked to cancel it, if anyone did."""

    job_id: int
    worker: str | None
    token: str | None
    attempt: int
    cancelled_by: str | None


@dataclass(frozen=True)
class Requeued:
    """What a requeue did to each running job it was given."""

    requeued: list[int] = field(default_factory=list)  # waiting again, at their fair rank
    cancelled: list[int] = field(default_factory=list)  # someone had asked to cancel them
    failed: list[int] = field(default_factory=list)  # started MAX_ATTEMPTS times: given up


@dataclass(frozen=True)
class UserFigures:
    owner_id: str
    name: str  # the display name last seen ("" if none)
    jobs: int
    images: int


@dataclass(frozen=True)
class ModelFigures:
    model: str
    jobs: int
    done: int
    failed: int
    images: int


@dataclass(frozen=True)
class PeriodStats:
    """The figures of the jobs asked for in a period (/stats): how they ended, the images they made, the
    median wait (asked → started, of those that started) and run (started → done), the busiest users and
    each model's share."""

    since: float
    states: dict[str, int] = field(default_factory=dict)  # state → jobs (queued and running too)
    images: int = 0
    median_wait: float | None = None
    median_run: float | None = None
    users: list[UserFigures] = field(default_factory=list)  # most jobs first
    models: list[ModelFigures] = field(default_factory=list)  # most jobs first

    @property
    def jobs(self) -> int:
        return sum(self.states.values())


# -- stored parameters: the JSON in jobs.request and jobs.params, read through models that upgrade old rows --


class _Stored(BaseModel):
    # A field a later release added is missing from older rows: it takes its default. A field a later
    # release dropped is ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)


class StoredChoices(_Stored):
    prompt: str
    negative: str = ""
    quality: str | None = None
    year: str | None = None
    rating: str | None = None
    artist: str | None = None
    character: str | None = None
    default_negative: bool = True
    sfw: bool = False


class StoredSource(_Stored):
    path: str
    sha256: str
    job_id: int | None = None
    index: int = 0

    def to_source(self) -> SourceImage:
        return SourceImage(**self.model_dump())


class StoredLora(_Stored):
    name: str
    sha256: str
    weight: float
    short_hash: str = ""


class StoredHires(_Stored):
    scale: float
    strength: float


class StoredRequest(_Stored):
    """jobs.request: what the user asked for."""

    model: str
    choices: StoredChoices
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    aspect: str | None = None
    size: str | None = None
    count: int = 1
    sampler: str | None = None
    nsfw_allowed: bool = True
    lora: str | None = None
    hires: bool = False
    strength: float | None = None
    kind: JobKind = "txt2img"
    source: StoredSource | None = None
    scale: float | None = None

    def to_request(self) -> GenerationRequest:
        data = self.model_dump()
        data["choices"] = PromptChoices(**data["choices"])
        data["source"] = None if self.source is None else self.source.to_source()
        return GenerationRequest(**data)


class StoredParams(_Stored):
    """jobs.params: the resolved parameters the worker runs."""

    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    steps: int
    cfg: float
    seeds: tuple[int, ...]
    sampler: str
    loras: tuple[StoredLora, ...] = ()
    source: StoredSource | None = None
    strength: float = 1.0
    hires: StoredHires | None = None

    def to_params(self) -> GenerationParams:
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            cfg=self.cfg,
            seeds=self.seeds,
            sampler=self.sampler,
            loras=tuple(LoraWeight(**lora.model_dump()) for lora in self.loras),
            source=None if self.source is None else self.source.to_source(),
            strength=self.strength,
            hires=None if self.hires is None else HiresFix(**self.hires.model_dump()),
        )


def request_to_json(request: GenerationRequest) -> str:
    return json.dumps(asdict(request), ensure_ascii=False)


def request_from_json(text: str) -> GenerationRequest:
    return StoredRequest.model_validate_json(text).to_request()


def params_to_json(params: GenerationParams) -> str:
    return json.dumps(asdict(params), ensure_ascii=False)


def params_from_json(text: str) -> GenerationParams:
    return StoredParams.model_validate_json(text).to_params()


_JOB_COLUMNS = """
    j.id, j.owner_id, j.guild_id, j.channel_id, j.model, j.request, j.params, j.state, j.error, j.attempts,
    j.reroll_of, j.cancelled_by, j.created_at, j.started_at, j.finished_at, j.locale, j.verdict, j.withheld,
    j.parent_id, j.kind,
    EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id) AS delivered
"""
# A claimed job's row as UPDATE ... RETURNING gives it (never delivered yet).
_RETURNED_COLUMNS = """
    id, owner_id, guild_id, channel_id, model, request, params, state, error, attempts, reroll_of, cancelled_by,
    created_at, started_at, finished_at, locale, verdict, withheld, parent_id, kind, 0 AS delivered
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
        withheld=row["withheld"],
        parent_id=row["parent_id"],
        kind=_kind(row["kind"]),
    )


_KINDS: tuple[JobKind, ...] = ("txt2img", "img2img", "vary", "upscale")


def _kind(value: str) -> JobKind:
    for kind in _KINDS:
        if kind == value:
            return kind
    raise ValueError(f"unknown job kind {value!r}")


def _readable(rows: list[Any]) -> list[JobRecord]:
    """The jobs of `rows`, without those whose stored row cannot be read (logged): one damaged row must not
    hide every other job from delivery or from a user's history."""
    jobs = []
    for row in rows:
        try:
            jobs.append(_job(row))
        except ValueError:
            log.exception("job %s: its stored row cannot be read; skipped", row["id"])
    return jobs


def _dispatch(row: Any) -> Dispatch:
    return Dispatch(int(row["id"]), row["claimed_by"], row["dispatch_token"], int(row["attempts"]), row["cancelled_by"])


def _image(row: Any) -> ImageRecord:
    return ImageRecord(
        row["job_id"], row["idx"], row["seed"], row["path"], row["width"], row["height"], row["parameters"],
        row["rating"], row["rating_score"],
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
        """Queue a new job at its fair rank: its owner's served count plus their jobs already waiting. A job made
        from a result's image (vary, upscale) records that job as its parent."""
        source = resolved.params.source
        return await self.store.insert(
            "INSERT INTO jobs (owner_id, guild_id, channel_id, model, request, params, image_count, state, "
            "reroll_of, created_at, locale, verdict, parent_id, kind, queue_rank)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, "
            "COALESCE((SELECT served FROM queue_served WHERE owner_id = ?1), 0)"
            " + (SELECT COUNT(*) FROM jobs INDEXED BY jobs_waiting_by_owner"
            " WHERE owner_id = ?1 AND state = 'queued'))",
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
                None if source is None else source.job_id,
                resolved.request.kind,
            ),
        )

    async def claim_next(
        self, worker_id: str, models: Collection[str] | None = None, token: str | None = None
    ) -> JobRecord | None:
        """The next job in fair order, queued → running for `worker_id`, in one UPDATE ... RETURNING; None
        if nothing waits. With `models`, the next one among the jobs for those models (what the idle workers of
        the pool serve); `token` is recorded as the dispatch's token (bot/core/pool).
        Safe with any number of claimers on any number of connections or processes:
        SQLite runs one write transaction at a time and the UPDATE re-checks `state = 'queued'`, so a job
        is claimed once. Its owner's served count grows by one in the same transaction (their remaining
        jobs keep their rank: served + 1, place - 1), or is forgotten if they have nothing left waiting.
        An empty queue is seen with a read (WAL: never blocked by a writer), without taking the write lock."""
        among = "" if models is None else " AND model IN (SELECT value FROM json_each(?3))"
        chosen = json.dumps(sorted(models or ()))
        if not await self.store.fetchall(
            f"SELECT 1 FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued'{among} LIMIT 1",
            (None, None, chosen) if models is not None else (),
        ):
            return None
        async with self.store.transaction():
            row = await self.store.fetchone(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?1, claimed_by = ?2, "
                "dispatch_token = ?4 "
                "WHERE id = (SELECT id FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued'"
                f"{among} ORDER BY queue_rank, id LIMIT 1) "
                "AND state = 'queued' "
                f"RETURNING {_RETURNED_COLUMNS}",
                (time.time(), worker_id, chosen, token),
            )
            if row is None:
                return None
            await self.store.execute(
                "INSERT INTO queue_served (owner_id, served) VALUES (?, 1) "
                "ON CONFLICT (owner_id) DO UPDATE SET served = served + 1",
                (row["owner_id"],),
            )
            await self._forget_served_if_idle(row["owner_id"])
            try:
                return _job(row)
            except ValueError:  # pydantic's ValidationError, bad JSON, an unknown state
                await self.fail(int(row["id"]), UNREADABLE)
        raise UnreadableJob(int(row["id"]))

    async def finish(self, job_id: int, images: list[ImageRecord], token: str | None = None) -> bool:
        """running → done with its images, once. False (and nothing written) if it was not running, or, with a
        `token`, not running on the dispatch that token names."""
        async with self.store.transaction():
            changed = await self.store.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?1, error = NULL WHERE id = ?2 AND state = 'running'"
                " AND (?3 IS NULL OR dispatch_token = ?3)",
                (time.time(), job_id, token),
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

    async def fail(self, job_id: int, message: str, token: str | None = None) -> bool:
        """queued/running → failed, once; its quota usage is given back. With a `token`: only while running on
        the dispatch that token names."""
        states = ("running",) if token is not None else ("queued", "running")
        return await self._end_unfinished(job_id, JobState.FAILED, "error", message, states, token)

    async def cancel(self, job_id: int, by: str, token: str | None = None) -> bool:
        """queued/running → cancelled, once; its quota usage is given back. With a `token`: only while running
        on the dispatch that token names."""
        states = ("running",) if token is not None else ("queued", "running")
        return await self._end_unfinished(job_id, JobState.CANCELLED, "cancelled_by", by, states, token)

    async def cancel_waiting(self, job_id: int, by: str) -> bool:
        """queued → cancelled, once; False if it is no longer waiting (a worker claimed it meanwhile)."""
        return await self._end_unfinished(job_id, JobState.CANCELLED, "cancelled_by", by, ("queued",))

    async def _end_unfinished(
        self,
        job_id: int,
        state: JobState,
        column: Literal["error", "cancelled_by"],
        value: str,
        states: tuple[str, ...],
        token: str | None = None,
    ) -> bool:
        async with self.store.transaction():
            before = await self.store.fetchone(
                "SELECT owner_id, state, queue_rank, dispatch_token FROM jobs WHERE id = ?", (job_id,)
            )
            if before is None or before["state"] not in states:
                return False
            if token is not None and before["dispatch_token"] != token:
                return False
            await self.store.execute(
                f"UPDATE jobs SET state = ?, {column} = ?, finished_at = ? WHERE id = ?",
                (state.value, value, time.time(), job_id),
            )
            await self.store.execute("DELETE FROM usage WHERE job_id = ?", (job_id,))
            if before["state"] == JobState.QUEUED:
                await self._close_gap(before["owner_id"], job_id)
            return True

    async def _close_gap(self, owner_id: str, job_id: int) -> None:
        """A waiting job left the queue without being served: the owner's later jobs move up one place."""
        await self.store.execute(
            "UPDATE jobs SET queue_rank = queue_rank - 1 WHERE owner_id = ? AND state = 'queued' AND id > ?",
            (owner_id, job_id),
        )
        await self._forget_served_if_idle(owner_id)

    async def _forget_served_if_idle(self, owner_id: str) -> None:
        """Once a user has nothing waiting, their next job is ranked as a newcomer's."""
        await self.store.execute(
            "DELETE FROM queue_served WHERE owner_id = ?1 "
            "AND NOT EXISTS (SELECT 1 FROM jobs WHERE owner_id = ?1 AND state = 'queued')",
            (owner_id,),
        )

    async def cancel_all_waiting(self, by: str) -> list[int]:
        """Every waiting job → cancelled (usage given back), in one transaction; their ids."""
        async with self.store.transaction():
            rows = await self.store.fetchall(
                "UPDATE jobs SET state = 'cancelled', cancelled_by = ?, finished_at = ? WHERE state = 'queued' "
                "RETURNING id",
                (by, time.time()),
            )
            ids = sorted(int(row["id"]) for row in rows)
            await self.store.execute(
                "DELETE FROM usage WHERE job_id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
            )
            await self.store.execute("DELETE FROM queue_served")  # nobody has anything waiting
            return ids

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
        killer), and must not crash-loop the bot. A requeued job was not served after all: its owner's
        served count goes back down one, and the fair ranks are computed afresh."""
        async with self.store.transaction():
            rows = await self.store.fetchall(
                "SELECT id, owner_id, attempts, cancelled_by FROM jobs WHERE state = 'running' ORDER BY id"
            )
            return (await self._requeue_rows(rows, GAVE_UP_BOT)).requeued

    async def requeue(self, dispatches: Collection[Dispatch], *, attempt_counts: bool = True) -> Requeued:
        """Running jobs whose worker is gone go back to the queue at their fair rank (the pool's failover), each
        only while it is still running on that dispatch (the same worker and token). As at a restart, a job
        someone asked to cancel is cancelled and one started MAX_ATTEMPTS times is failed. `attempt_counts`
        False: the job never reached a worker (its dispatch could not be sent), so the start is not counted."""
        outcome = Requeued()
        async with self.store.transaction():
            rows = []
            for dispatch in sorted(dispatches, key=lambda d: d.job_id):
                if not attempt_counts:
                    await self.store.execute(
                        "UPDATE jobs SET attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND state = 'running'"
                        " AND claimed_by IS ?2 AND dispatch_token IS ?3",
                        (dispatch.job_id, dispatch.worker, dispatch.token),
                    )
                row = await self.store.fetchone(
                    "SELECT id, owner_id, attempts, cancelled_by FROM jobs WHERE id = ?1 AND state = 'running'"
                    " AND claimed_by IS ?2 AND dispatch_token IS ?3",
                    (dispatch.job_id, dispatch.worker, dispatch.token),
                )
                if row is not None:
                    rows.append(row)
            outcome = await self._requeue_rows(rows, GAVE_UP_WORKER)
        return outcome

    async def _requeue_rows(self, rows: list[Any], gave_up: str) -> Requeued:
        """Inside a transaction: the running jobs of `rows` (id, owner_id, attempts, cancelled_by) back to the
        queue, cancelled, or failed with `gave_up`; the ranks recomputed."""
        outcome = Requeued()
        for row in rows:
            if row["cancelled_by"] is not None:
                await self.cancel(row["id"], row["cancelled_by"])
                outcome.cancelled.append(row["id"])
            elif row["attempts"] >= MAX_ATTEMPTS:
                await self.fail(row["id"], gave_up)
                outcome.failed.append(row["id"])
            else:
                await self.store.execute(
                    "UPDATE jobs SET state = 'queued', started_at = NULL, claimed_by = NULL, dispatch_token = NULL"
                    " WHERE id = ?",
                    (row["id"],),
                )
                await self.store.execute(
                    "UPDATE queue_served SET served = MAX(served - 1, 0) WHERE owner_id = ?", (row["owner_id"],)
                )
                outcome.requeued.append(row["id"])
        if outcome.requeued:
            await self.rerank()
        return outcome

    async def dispatches(self) -> list[Dispatch]:
        """Every running job with whom it was handed to, first started first."""
        rows = await self.store.fetchall(
            "SELECT id, claimed_by, dispatch_token, attempts, cancelled_by FROM jobs WHERE state = 'running'"
            " ORDER BY started_at, id"
        )
        return [_dispatch(row) for row in rows]

    async def dispatch(self, job_id: int) -> Dispatch | None:
        """Whom a running job was handed to; None if it is not running."""
        row = await self.store.fetchone(
            "SELECT id, claimed_by, dispatch_token, attempts, cancelled_by FROM jobs"
            " WHERE id = ? AND state = 'running'",
            (job_id,),
        )
        return None if row is None else _dispatch(row)

    async def next_waiting_model(self, models: Collection[str]) -> str | None:
        """The model of the job that runs next among the waiting jobs for `models` (fair order); None if none."""
        value = await self.store.scalar(
            "SELECT model FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued'"
            " AND model IN (SELECT value FROM json_each(?)) ORDER BY queue_rank, id LIMIT 1",
            (json.dumps(sorted(models)),),
        )
        return None if value is None else str(value)

    async def rerank(self) -> None:
        """Compute every waiting job's rank from the rule (after a requeue; the writes above keep it
        exact otherwise). One pass over the waiting jobs."""
        async with self.store.transaction():
            await self.store.execute(
                "DELETE FROM queue_served WHERE owner_id NOT IN (SELECT owner_id FROM jobs WHERE state = 'queued')"
            )
            await self.store.execute(
                "UPDATE jobs SET queue_rank = ranked.rank FROM ("
                " SELECT j.id, COALESCE(s.served, 0)"
                "  + ROW_NUMBER() OVER (PARTITION BY j.owner_id ORDER BY j.id) - 1 AS rank"
                " FROM jobs j LEFT JOIN queue_served s ON s.owner_id = j.owner_id WHERE j.state = 'queued'"
                ") AS ranked WHERE jobs.id = ranked.id"
            )

    async def mark_delivered(self, job_id: int, target: str = "") -> bool:
        """Record that the result reached the user. False if it already had (never deliver twice)."""
        changed = await self.store.execute(
            "INSERT INTO deliveries (job_id, delivered_at, target) VALUES (?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
            (job_id, time.time(), target),
        )
        return changed == 1

    async def set_rating(self, job_id: int, index: int, rating: str, score: float) -> None:
        """Store the tagger's rating of one result image."""
        await self.store.execute(
            "UPDATE images SET rating = ?, rating_score = ? WHERE job_id = ? AND idx = ?",
            (rating, score, job_id, index),
        )

    async def withhold(self, job_id: int, reason: str) -> bool:
        """Record that the job's result was not posted (its images stay): `reason` is the rating or "unchecked".
        False if it was recorded before."""
        changed = await self.store.execute(
            "UPDATE jobs SET withheld = ? WHERE id = ? AND withheld IS NULL", (reason, job_id)
        )
        return changed == 1

    # -- the queue's order ------------------------------------------------------------------------

    async def waiting_count(self) -> int:
        return int(await self.store.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"))

    async def order(self) -> list[int]:
        """Waiting job ids in the order they will run."""
        rows = await self.store.fetchall(
            "SELECT id FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued' ORDER BY queue_rank, id"
        )
        return [int(row["id"]) for row in rows]

    async def position(self, job_id: int) -> int | None:
        """1 = runs next; None if not waiting. A count along the order index up to the job: the jobs of a lower
        rank (a plain range of the index), then those of its rank before it (a row-value comparison on every
        entry counted takes about twice as long: ~10 ms with 100,000 waiting)."""
        value = await self.store.scalar(
            "SELECT 1"
            " + (SELECT COUNT(*) FROM jobs w INDEXED BY jobs_waiting_in_order"
            "    WHERE w.state = 'queued' AND w.queue_rank < j.queue_rank)"
            " + (SELECT COUNT(*) FROM jobs w INDEXED BY jobs_waiting_in_order"
            "    WHERE w.state = 'queued' AND w.queue_rank = j.queue_rank AND w.id < j.id)"
            " FROM jobs j WHERE j.id = ? AND j.state = 'queued'",
            (job_id,),
        )
        return None if value is None else int(value)

    async def positions_of(self, owner_id: str, limit: int) -> tuple[list[tuple[int, int]], int]:
        """(position, job id) of one user's first `limit` waiting jobs, first to run first; and how many
        they have waiting in all. One pass along the order up to the last of them (the jobs before the first,
        then those between each and the next), not a count from the front for each."""
        total = int(
            await self.store.scalar(
                "SELECT COUNT(*) FROM jobs INDEXED BY jobs_waiting_by_owner WHERE owner_id = ? AND state = 'queued'",
                (owner_id,),
            )
        )
        # The owner's jobs run in id order (their ranks grow with it): their first `limit` by id are the first
        # to run. Each one's `ahead` counts the waiting jobs from the previous one (included) up to it.
        rows = await self.store.fetchall(
            "WITH mine AS (SELECT id, queue_rank FROM jobs INDEXED BY jobs_waiting_by_owner"
            "  WHERE owner_id = ?1 AND state = 'queued' ORDER BY id LIMIT ?2),"
            " spans AS (SELECT id, queue_rank, LAG(queue_rank, 1, -1) OVER runs AS from_rank,"
            "  LAG(id, 1, 0) OVER runs AS from_id FROM mine WINDOW runs AS (ORDER BY queue_rank, id))"
            " SELECT s.id, (SELECT COUNT(*) FROM jobs w INDEXED BY jobs_waiting_in_order WHERE w.state = 'queued'"
            "  AND w.queue_rank BETWEEN s.from_rank AND s.queue_rank"
            "  AND (w.queue_rank, w.id) >= (s.from_rank, s.from_id) AND (w.queue_rank, w.id) < (s.queue_rank, s.id))"
            "  AS ahead"
            " FROM spans s ORDER BY s.queue_rank, s.id",
            (owner_id, limit),
        )
        found, position = [], 1
        for row in rows:
            position += int(row["ahead"])
            found.append((position, int(row["id"])))
        return found, total

    async def positions(self, job_ids: list[int]) -> dict[int, int]:
        """The positions of those of `job_ids` that are waiting, in one pass along the order."""
        if not job_ids:
            return {}
        rows = await self.store.fetchall(
            "SELECT id, position FROM ("
            " SELECT id, ROW_NUMBER() OVER (ORDER BY queue_rank, id) AS position"
            " FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued'"
            ") WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(job_ids),),
        )
        return {int(row["id"]): int(row["position"]) for row in rows}

    async def front(self, limit: int) -> list[int]:
        """The first `limit` waiting job ids, first to run first (their positions are 1, 2, ...): one walk of
        `limit` entries along the order index."""
        rows = await self.store.fetchall(
            "SELECT id FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued' ORDER BY queue_rank, id"
            " LIMIT ?",
            (limit,),
        )
        return [int(row["id"]) for row in rows]

    async def still_waiting(self, job_ids: Collection[int]) -> set[int]:
        """Those of `job_ids` that are waiting now."""
        if not job_ids:
            return set()
        rows = await self.store.fetchall(
            "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND state = 'queued'",
            (json.dumps(sorted(job_ids)),),
        )
        return {int(row["id"]) for row in rows}

    async def unfinished_count(self, owner_id: str) -> int:
        """How many jobs the user has waiting or running."""
        return int(
            await self.store.scalar(
                "SELECT (SELECT COUNT(*) FROM jobs INDEXED BY jobs_waiting_by_owner WHERE owner_id = ?1"
                " AND state = 'queued') + (SELECT COUNT(*) FROM jobs WHERE state = 'running' AND owner_id = ?1)",
                (owner_id,),
            )
        )

    async def running(self) -> list[int]:
        """Jobs a worker runs now, first started first."""
        rows = await self.store.fetchall("SELECT id FROM jobs WHERE state = 'running' ORDER BY started_at, id")
        return [int(row["id"]) for row in rows]

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, job_id: int) -> JobRecord | None:
        row = await self.store.fetchone(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = ?", (job_id,))
        return None if row is None else _job(row)

    async def unfinished(self) -> list[JobRecord]:
        """Jobs waiting or running, oldest first."""
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state IN ('queued', 'running') ORDER BY j.id"
        )
        return _readable(rows)

    async def unfinished_page(self, after: int, limit: int) -> list[UnfinishedJob]:
        """One page of the jobs waiting or running, by id after `after`: who and where only (no JSON is read),
        what a restart needs to bring each one's result when it finishes."""
        rows = await self.store.fetchall(
            "SELECT id, owner_id, channel_id, locale, state FROM jobs WHERE state IN ('queued', 'running')"
            " AND id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [
            UnfinishedJob(int(r["id"]), r["owner_id"], r["channel_id"], r["locale"], JobState(r["state"])) for r in rows
        ]

    async def images(self, job_id: int) -> list[ImageRecord]:
        rows = await self.store.fetchall("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,))
        return [_image(row) for row in rows]

    async def undelivered(self) -> list[JobRecord]:
        """Finished jobs (done or failed) whose result has not reached the user yet."""
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state IN ('done', 'failed') "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.id) ORDER BY j.id"
        )
        return _readable(rows)

    async def job_for_delivery(self, target: str) -> int | None:
        """The job whose result was delivered to `target` (frontend-specific, e.g. "channel:message")."""
        value = await self.store.scalar("SELECT job_id FROM deliveries WHERE target = ?", (target,))
        return None if value is None else int(value)

    async def period_stats(self, since: float, guild_id: str | None = None, top_users: int = 5) -> PeriodStats:
        """The figures of the jobs asked for since `since` (a time.time()), in the server `guild_id` or, with
        None, everywhere. One read (one snapshot): a row per job, summed up here."""
        rows = await self.store.fetchall(
            "SELECT j.owner_id, j.model, j.state, j.created_at, j.started_at, j.finished_at,"
            " COALESCE(u.display_name, '') AS name,"
            " (SELECT COUNT(*) FROM images i WHERE i.job_id = j.id) AS images"
            " FROM jobs j LEFT JOIN users u ON u.id = j.owner_id"
            " WHERE j.created_at >= ?1 AND (?2 IS NULL OR j.guild_id = ?2)",
            (since, guild_id),
        )
        states: dict[str, int] = {}
        waits: list[float] = []
        runs: list[float] = []
        users: dict[str, list[Any]] = {}  # owner → [name, jobs, images]
        models: dict[str, list[int]] = {}  # model → [jobs, done, failed, images]
        for row in rows:
            state, images = str(row["state"]), int(row["images"])
            states[state] = states.get(state, 0) + 1
            if row["started_at"] is not None:
                waits.append(max(0.0, row["started_at"] - row["created_at"]))
                if state == JobState.DONE and row["finished_at"] is not None:
                    runs.append(max(0.0, row["finished_at"] - row["started_at"]))
            user = users.setdefault(row["owner_id"], [row["name"], 0, 0])
            user[1] += 1
            user[2] += images
            model = models.setdefault(row["model"], [0, 0, 0, 0])
            model[0] += 1
            model[1] += state == JobState.DONE
            model[2] += state == JobState.FAILED
            model[3] += images
        busiest = sorted(users.items(), key=lambda item: (-item[1][1], -item[1][2], item[0]))[:top_users]
        return PeriodStats(
            since=since,
            states=states,
            images=sum(figures[3] for figures in models.values()),
            median_wait=statistics.median(waits) if waits else None,
            median_run=statistics.median(runs) if runs else None,
            users=[UserFigures(owner, name, jobs, images) for owner, (name, jobs, images) in busiest],
            models=[
                ModelFigures(name, *figures)
                for name, figures in sorted(models.items(), key=lambda item: (-item[1][0], item[0]))
            ],
        )

    async def history(self, owner_id: str, page: int = 0, per_page: int = 10) -> tuple[list[JobRecord], int]:
        """A user's jobs, newest first, one page; and the total count."""
        total = int(await self.store.scalar("SELECT COUNT(*) FROM jobs WHERE owner_id = ?", (owner_id,)))
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.owner_id = ? ORDER BY j.id DESC LIMIT ? OFFSET ?",
            (owner_id, per_page, page * per_page),
        )
        return _readable(rows), total
