"""What the queue and worker tell frontends: queue positions, progress, results. Plain data.
Frontends follow one job with GenerationService.watch(job_id)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.core.jobs import JobRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobQueued:
    """A followed job's shown queue position changed (JobQueue.follow_positions)."""

    job_id: int
    position: int  # what its user is shown (bot/core/positions.py): exact up to EXACT_POSITIONS, else "about N"


@dataclass(frozen=True)
class JobSubmitted:
    """A job was persisted and queued (for listeners such as the metrics; a job's followers do not get it)."""

    job_id: int
    model: str


@dataclass(frozen=True)
class JobStarted:
    job_id: int
    model: str


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    step: int
    total: int
    elapsed: float
    eta: float


@dataclass(frozen=True)
class JobFinished:
    job_id: int
    state: str  # done | failed | cancelled
    error: str | None = None


@dataclass(frozen=True)
class ImagesWithheld:
    """A job's result images were not posted (the rating check; for listeners such as the metrics)."""

    job_id: int
    count: int
    reason: str  # the rating above the channel's allowance, or "unchecked" (the check could not run)


@dataclass(frozen=True)
class ModelLoading:
    model: str
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class JobEnded:
    """The last event `GenerationService.watch` yields: the job as it finished (done, failed or
    cancelled, its images recorded)."""

    job: JobRecord

    @property
    def job_id(self) -> int:
        return self.job.id


Event = JobSubmitted | JobQueued | JobStarted | JobProgress | JobFinished | ModelLoading | ImagesWithheld
JobEvent = JobQueued | JobStarted | JobProgress | JobFinished  # the events of one job
WatchEvent = JobQueued | JobStarted | JobProgress | JobEnded  # what watch() yields


class EventBus:
    """Fan-out of events; publishing never blocks. Listeners are plain callbacks that hear every event;
    `follow(job_id)` gives a queue of one job's events (what GenerationService.watch reads), so
    publishing a job's event costs one dict lookup whatever the number of followed jobs."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._followers: dict[int, set[asyncio.Queue[JobEvent]]] = {}
        self.progress: dict[int, JobProgress] = {}  # the last progress of each running job

    def listen(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for every event, on the event loop; returns the undo."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def follow(self, job_id: int) -> asyncio.Queue[JobEvent]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._followers.setdefault(job_id, set()).add(queue)
        return queue

    def unfollow(self, job_id: int, queue: asyncio.Queue[JobEvent]) -> None:
        followers = self._followers.get(job_id)
        if followers is not None:
            followers.discard(queue)
            if not followers:
                del self._followers[job_id]

    def followed(self) -> list[int]:
        """The jobs someone follows now."""
        return list(self._followers)

    def publish(self, event: Event) -> None:
        """Never raises: publishers are the queue's state changes and the GPU worker, which a frontend's
        broken callback must not stop half-way."""
        if isinstance(event, JobProgress):
            self.progress[event.job_id] = event
        elif isinstance(event, JobFinished):
            self.progress.pop(event.job_id, None)
        if not isinstance(event, ModelLoading | JobSubmitted | ImagesWithheld):
            for queue in self._followers.get(event.job_id, ()):
                queue.put_nowait(event)
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                log.exception("event listener %r failed on %r", callback, event)
