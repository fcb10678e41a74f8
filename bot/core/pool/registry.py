"""The live workers of the pool, as their heartbeats announce them (bot side). A worker is alive while its key
`P:worker:{id}` exists: the worker rewrites it every heartbeat interval with an expiry of the visibility timeout,
so a worker killed with SIGKILL, or whose host is lost, is gone once that much time has passed without a beat.

`read()` is one round trip (SMEMBERS + MGET in a pipeline); the dispatcher calls it every poll and keeps the
snapshot, which answers the cheap questions (/queue, the pre-flight check, which worker holds a model)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from bot.core.pool.protocol import Heartbeat, Keys, ProtocolError, check_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One read of the registry."""

    live: dict[str, Heartbeat] = field(default_factory=dict)  # worker id -> its last heartbeat
    gone: tuple[str, ...] = ()  # ids in the set whose heartbeat key has expired (or was deleted at a clean stop)
    unreadable: tuple[str, ...] = ()  # alive, but their heartbeat does not validate: not handed jobs, not reaped
    read_at: float = 0.0  # time.monotonic()

    def serving(self, model: str) -> list[Heartbeat]:
        """The live workers that can serve `model`."""
        return [beat for beat in self.live.values() if model in beat.models]

    def holding(self, model: str) -> list[Heartbeat]:
        """The live workers that hold `model` now."""
        return [beat for beat in self.live.values() if model in beat.loaded]

    def alive(self, worker_id: str | None) -> bool:
        return worker_id is not None and (worker_id in self.live or worker_id in self.unreadable)


class WorkerRegistry:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.snapshot = Snapshot()
        self._complained: set[str] = set()  # ids whose bad heartbeat was logged (once each)

    async def read(self, client: Redis) -> Snapshot:
        members: Any = await client.smembers(self.keys.workers)  # bytes (decode_responses=False)
        ids = []
        for raw in sorted(members):
            try:
                ids.append(check_id(raw.decode("utf-8", "replace")))
            except ProtocolError as e:
                self._complain(repr(raw)[:100], str(e))
        beats: list[Any] = await client.mget([self.keys.worker(worker_id) for worker_id in ids]) if ids else []
        live: dict[str, Heartbeat] = {}
        gone: list[str] = []
        unreadable: list[str] = []
        for worker_id, beat_raw in zip(ids, beats, strict=True):
            if beat_raw is None:
                gone.append(worker_id)
                continue
            try:
                beat = Heartbeat.from_bytes(beat_raw)
                if beat.id != worker_id:
                    raise ProtocolError(f"heartbeat of {beat.id!r} under the key of {worker_id!r}")
            except ProtocolError as e:
                self._complain(worker_id, str(e))
                unreadable.append(worker_id)
                continue
            self._complained.discard(worker_id)
            live[worker_id] = beat
        self.snapshot = Snapshot(live, tuple(gone), tuple(unreadable), time.monotonic())
        return self.snapshot

    def _complain(self, worker_id: str, reason: str) -> None:
        if worker_id not in self._complained:
            self._complained.add(worker_id)
            log.warning("worker %s: its heartbeat cannot be read (%s); it is handed no jobs", worker_id, reason)
