"""A simulated pool worker for the dispatcher's tests: it speaks protocol.py over a real Redis exactly as a worker
process does (heartbeat key with an expiry, its inbox read through the consumer group, results with real PNGs,
progress events, the control channel), and the test decides when each job ends. Redis going away is survived: every
loop retries, as the real worker does."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Iterable
from typing import Any

from PIL import Image
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.core.pool.dispatcher import cancel_and_wait, entries_of
from bot.core.pool.protocol import (
    WORKER_GROUP,
    ControlMessage,
    EventMessage,
    Heartbeat,
    ImageMeta,
    JobMessage,
    Keys,
    Outcome,
    ResultMessage,
)

DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def tiny_png(colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


class SimWorker:
    def __init__(
        self,
        url: str,
        worker_id: str,
        *,
        keys: Keys | None = None,
        models: Iterable[str] = ("tiny-sdxl", "tiny-anima"),
        loaded: Iterable[str] = (),
        slots: int = 1,
        budget: int | None = None,
        visibility: float = 0.6,
        auto: bool = False,
    ) -> None:
        self.url = url
        self.id = worker_id
        self.keys = keys or Keys()
        self.models = tuple(models)
        self.loaded = tuple(loaded)
        self.slots = slots
        self.budget = budget
        self.visibility = visibility
        self.auto = auto  # send a done result as soon as a job arrives
        self.received: list[JobMessage] = []  # every job read from the inbox, in order
        self.entries: dict[int, bytes] = {}  # job id -> its inbox entry id (acknowledged with the result)
        self.open: dict[int, JobMessage] = {}  # received, no result sent yet
        self.most_open = 0  # the most jobs it held at once
        self.controls: list[ControlMessage] = []
        self.client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
        self._tasks: list[asyncio.Task[None]] = []
        self.arrived = asyncio.Event()

    async def start(self) -> SimWorker:
        await self._retry(self._register)
        self._tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._read_inbox()),
            asyncio.create_task(self._listen()),
        ]
        return self

    async def _register(self) -> None:
        with contextlib.suppress(ResponseError):
            await self.client.xgroup_create(self.keys.inbox(self.id), WORKER_GROUP, id="0", mkstream=True)
        await self.beat()
        await self.client.sadd(self.keys.workers, self.id)

    async def _retry(self, action: Any) -> Any:
        while True:
            try:
                return await action()
            except DOWN:
                await asyncio.sleep(0.05)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            id=self.id, device="cpu", models=self.models, loaded=self.loaded, slots=self.slots,
            busy=tuple(self.open)[:64], budget=self.budget, sent_at=time.time(),
        )

    async def beat(self) -> None:
        await self.client.set(self.keys.worker(self.id), self.heartbeat().to_bytes(), px=int(self.visibility * 1000))

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(*DOWN):
                await self.beat()
                await self.client.sadd(self.keys.workers, self.id)
            await asyncio.sleep(self.visibility / 4)

    async def _read_inbox(self) -> None:
        while True:
            try:
                reply = await self.client.xreadgroup(
                    WORKER_GROUP, self.id, {self.keys.inbox(self.id): ">"}, count=10, block=50
                )
            except DOWN:
                await asyncio.sleep(0.05)
                continue
            except ResponseError:  # the inbox was deleted (reaped): make it again
                with contextlib.suppress(ResponseError, *DOWN):
                    await self.client.xgroup_create(self.keys.inbox(self.id), WORKER_GROUP, id="0", mkstream=True)
                await asyncio.sleep(0.05)
                continue
            for entry_id, fields in entries_of(reply):
                job = JobMessage.from_fields(fields)
                self.received.append(job)
                self.entries[job.job_id] = entry_id
                self.open[job.job_id] = job
                self.most_open = max(self.most_open, len(self.open))
                self.arrived.set()
                if self.auto:
                    await self.finish(job.job_id)

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.keys.control(self.id))
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self.controls.append(ControlMessage.from_bytes(message["data"]))
            except DOWN:
                await asyncio.sleep(0.05)

    async def wait_for_jobs(self, count: int, timeout: float = 20.0) -> list[JobMessage]:
        """The first `count` jobs it received (waits for them)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{self.id} received {len(self.received)} jobs"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.1)
        return self.received[:count]

    def result(self, job: JobMessage, outcome: Outcome = "done", **changes: Any) -> dict[str, bytes]:
        images = (
            tuple(
                ImageMeta(index=i, seed=seed, width=8, height=8, parameters=f"seed {seed}")
                for i, seed in enumerate(job.params.seeds)
            )
            if outcome == "done"
            else ()
        )
        fields: dict[str, Any] = {
            "job_id": job.job_id, "attempt": job.attempt, "token": job.token, "worker": self.id,
            "outcome": outcome, "images": images, "error": "out of memory" if outcome == "failed" else None,
        }
        fields.update(changes)
        message = ResultMessage(**fields)
        return message.fields([tiny_png() for _ in message.images])

    async def send(self, entry: dict[str, bytes]) -> None:
        await self._retry(lambda: self.client.xadd(self.keys.results, entry))  # type: ignore[arg-type]

    async def finish(self, job_id: int, outcome: Outcome = "done", **changes: Any) -> None:
        """Send the job's result, then acknowledge its inbox entry (the order a worker keeps)."""
        job = self.open.pop(job_id)
        await self.send(self.result(job, outcome, **changes))
        await self._retry(lambda: self.client.xack(self.keys.inbox(self.id), WORKER_GROUP, self.entries[job_id]))

    async def event(self, **fields: Any) -> None:
        message = EventMessage(worker=self.id, **fields)
        await self._retry(lambda: self.client.xadd(self.keys.events, message.fields()))  # type: ignore[arg-type]

    async def progress(self, job_id: int, step: int, total: int) -> None:
        job = self.open[job_id]
        await self.event(kind="progress", job_id=job_id, token=job.token, step=step, total=total, elapsed=step * 0.5)

    async def kill(self) -> None:
        """As SIGKILL: everything stops, nothing is cleaned up (the heartbeat key expires on its own)."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def stop(self) -> None:
        """A clean stop: the heartbeat key is deleted."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.client.delete(self.keys.worker(self.id))
        with contextlib.suppress(Exception):
            await self.client.aclose()
