"""A simulated bot for the worker side's tests: it speaks bot/core/pool/protocol.py over a real Redis (XADDs jobs to
a worker's inbox, publishes cancels, reads the results, events and dead-letter streams, reads heartbeats)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis

from bot.core.pool.protocol import (
    BOT_CONSUMER,
    BOT_GROUP,
    WORKER_GROUP,
    ControlMessage,
    EventMessage,
    Heartbeat,
    JobMessage,
    Keys,
    ResultMessage,
    WireParams,
    new_token,
)
from inference.types import GenerationParams

WAIT = 120.0  # seconds a test waits for something before it fails (a hang, not a speed limit)


def params(steps: int = 2, seeds: tuple[int, ...] = (7,), size: int = 64) -> GenerationParams:
    return GenerationParams("1girl, solo", "lowres", size, size, steps, 5.0, seeds, "euler_a")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> None:
    """Wait until `check()` is true (polling), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except (redis.ConnectionError, redis.TimeoutError):  # Redis restarting: as the bot, ask again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class FakeBot:
    def __init__(self, client: redis.Redis, prefix: str = "animebot") -> None:
        # Any: redis-py's precise reply types (str | bytes | None ...) are not what a decode_responses=False
        # client returns, and the protocol's parsers check what they get anyway.
        self.client: Any = client
        self.keys = Keys(prefix)
        self.results_read: list[tuple[ResultMessage, list[bytes]]] = []
        self._events_cursor = "0"

    async def dispatch(
        self, worker: str, job_id: int, p: GenerationParams | None = None, model: str = "tiny-sdxl", attempt: int = 1
    ) -> JobMessage:
        message = JobMessage(
            job_id=job_id, attempt=attempt, token=new_token(), model=model,
            params=WireParams.of(p or params()), sent_at=time.time(),
        )
        await self.client.xadd(self.keys.inbox(worker), dict(message.fields()))
        return message

    async def cancel(self, worker: str, job: JobMessage, *, publish: bool = True, key: bool = True) -> None:
        if key:
            await self.client.set(self.keys.cancel(job.job_id, job.token), b"1", ex=86_400)
        if publish:
            control = ControlMessage(job_id=job.job_id, token=job.token)
            await self.client.publish(self.keys.control(worker), control.to_json())

    async def all_results(self) -> list[tuple[ResultMessage, list[bytes]]]:
        """Every entry of the results stream (XRANGE: without consuming it)."""
        entries = await self.client.xrange(self.keys.results)
        return [ResultMessage.from_fields(fields) for _id, fields in entries]

    async def result(self, job_id: int, timeout: float = 120.0) -> tuple[ResultMessage, list[bytes]]:
        """The first result of `job_id` in the results stream (waits for it)."""
        found: list[tuple[ResultMessage, list[bytes]]] = []

        async def check() -> bool:
            found[:] = [r for r in await self.all_results() if r[0].job_id == job_id]
            return bool(found)

        await eventually(check, f"the result of job {job_id}", timeout)
        return found[0]

    async def consume_results(self) -> list[tuple[bytes, ResultMessage]]:
        """Read the results stream through the bot's consumer group, as the dispatcher does (and acknowledge)."""
        try:
            await self.client.xgroup_create(self.keys.results, BOT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        reply = await self.client.xreadgroup(BOT_GROUP, BOT_CONSUMER, {self.keys.results: ">"}, count=100)
        read = []
        for entry_id, fields in (reply[0][1] if reply else []):
            read.append((entry_id, ResultMessage.from_fields(fields)[0]))
            await self.client.xack(self.keys.results, BOT_GROUP, entry_id)
        return read

    async def events(self, job_id: int | None = None) -> list[EventMessage]:
        entries = await self.client.xrange(self.keys.events)
        events = [EventMessage.from_fields(fields) for _id, fields in entries]
        return [e for e in events if job_id is None or e.job_id == job_id]

    async def heartbeat(self, worker: str) -> Heartbeat | None:
        raw = await self.client.get(self.keys.worker(worker))
        return None if raw is None else Heartbeat.from_bytes(raw)

    async def pending(self, worker: str) -> list[dict[str, object]]:
        """The inbox entries read by a consumer and not acknowledged."""
        try:
            return list(await self.client.xpending_range(self.keys.inbox(worker), WORKER_GROUP, "-", "+", 100))
        except redis.ResponseError:  # no such stream or group
            return []

    async def dead_letters(self) -> list[dict[bytes, bytes]]:
        return [fields for _id, fields in await self.client.xrange(self.keys.dead)]
