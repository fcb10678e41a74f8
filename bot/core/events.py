"""What the queue and worker tell frontends: queue positions, progress, results. Plain data."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobQueued:
    job_id: int
    position: int  # 1 = next to run


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
class ModelLoading:
    model: str
    stage: str
    done: int
    total: int


Event = JobQueued | JobStarted | JobProgress | JobFinished | ModelLoading


class EventBus:
    """Fan-out of events to subscribers; publishing never blocks (each subscriber has its own queue,
    each listener is a plain callback)."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    def listen(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for every event, on the event loop; returns the undo."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: Event) -> None:
        """Never raises: publishers are the queue's state changes and the GPU worker, which a frontend's
        broken callback must not stop half-way."""
        for queue in self._subscribers:
            queue.put_nowait(event)
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                log.exception("event listener %r failed on %r", callback, event)
