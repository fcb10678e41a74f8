"""The bot side of the worker pool ([workers] mode = "redis"): PoolDispatcher, the executor that hands the queue's
jobs to worker processes through Redis (docs/scaling.md draws the picture; protocol.py has the wire format).

SQLite stays the system of record: a job is dispatched by claiming it in the queue (running, claimed_by = the
worker, with a fresh dispatch token) and then XADDing it to that worker's inbox. One task, the scheduler, reads
the registry of live workers, requeues the jobs of workers that are gone (failover) and dispatches; a second one
records results (the stream `P:results`, read through the consumer group "bot", so a result read but not yet
recorded when the bot dies is read again at the next start); a third forwards progress and model loading to the
EventBus. While Redis cannot be reached they all stop, the queue keeps accepting jobs, and a supervisor
reconnects with growing pauses; every (re)connection records the pending results first, then reconciles: jobs
running in SQLite whose worker is not alive are queued again, the others keep running.

Credits: a worker slot is busy from the dispatch until its result is recorded (or the job is requeued), and the
scheduler claims a job only for an idle slot, so the inboxes never hold more than the workers can run and one
user's burst waits in the fair queue, not in a worker's backlog. Affinity: among the idle workers that serve the
job's model, one that holds it first, then one that holds nothing, then any."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.core.events import JobFinished, JobProgress, JobSubmitted, ModelLoading
from bot.core.jobs import GAVE_UP_WORKER, Dispatch, JobState, Requeued
from bot.core.memory_info import MemoryStatus, memory_status
from bot.core.pool.protocol import (
    BOT_CONSUMER,
    BOT_GROUP,
    CANCEL_TTL,
    DEAD_MAXLEN,
    DEFAULT_MAX_RESULT_BYTES,
    REAPER_CONSUMER,
    WORKER_GROUP,
    ControlMessage,
    EventMessage,
    Heartbeat,
    JobMessage,
    Keys,
    ProtocolError,
    ResultMessage,
    WireParams,
    dead_letter,
    new_token,
)
from bot.core.pool.registry import Snapshot, WorkerRegistry
from bot.core.pool.results import ResultRecorder
from bot.core.pool.status import ExecutorStatus, WorkerStatus
from bot.core.queue import SOURCE_GONE, JobQueue
from inference.memory import JobPlan, estimate_peak, gib, plan_job, reference_footprint, resolve_mode
from inference.specs import ModelSpec
from inference.types import ModelLoadError, StepProgress

log = logging.getLogger(__name__)

# What "Redis cannot be reached" looks like from redis-py (connection.py's RedisUnavailable wraps the same).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
FIRST_PAUSE = 0.1  # seconds before the first reconnection; doubled each time up to MAX_PAUSE
MAX_PAUSE = 5.0
RETRY_PAUSE = 1.0  # after a result that could not be recorded (busy database, full disk): read it again
UNSENDABLE = "This job could not be handed to a worker."
# An inbox keeps the entries its worker acknowledged; it is capped (approximately) at this many. A worker never has
# more than its slots (at most 64) unacknowledged, so the cap only ever drops acknowledged entries.
INBOX_MAXLEN = 1_000

RedisFactory = Callable[[], Redis | Awaitable[Redis]]
Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: its id and fields (None fields read as {})


def entries_of(reply: Any) -> list[Entry]:
    """The entries of an XREAD / XREADGROUP reply (one stream or several), in order."""
    return [(entry_id, fields or {}) for _, entries in reply or () for entry_id, fields in entries]


async def xadd(client: Redis, stream: str, fields: Mapping[str, bytes], **options: Any) -> None:
    await client.xadd(stream, dict(fields), **options)  # type: ignore[arg-type]  # redis-py's key type is too narrow


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel the tasks and wait until they have ended. Cancelled again until they do: on Python 3.11, redis-py's
    read timeout (asyncio.timeout) can swallow a cancellation that lands as the timeout expires, and the command
    is then retried as if nothing had happened."""
    pending = {task for task in tasks if not task.done()}
    cancelled = False  # the caller itself was cancelled meanwhile: raised once the tasks have ended
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=0.1)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


class _Unreachable(Exception):
    """Redis could not be connected to (logged once per outage)."""


class PoolDispatcher:
    """The Executor of redis mode (bot/core/executor.py's protocol): start() after the queue started (in redis mode
    without the queue's own requeue of running jobs: their workers may be alive)."""

    def __init__(
        self,
        queue: JobQueue,
        redis_factory: RedisFactory,
        *,
        keys: Keys | None = None,
        visibility_timeout: float = 60.0,
        poll: float = 0.25,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.queue = queue
        self.events = queue.events
        self.keys = keys or Keys()
        self.visibility_timeout = visibility_timeout
        self.poll = poll
        self.max_result_bytes = max_result_bytes
        self._factory = redis_factory
        self._registry = WorkerRegistry(self.keys)
        self._recorder = ResultRecorder(queue)
        self._online = False
        self._inflight: dict[int, Dispatch] = {}  # job id -> its dispatch (a busy worker slot each)
        self._unsent: dict[int, Dispatch] = {}  # claimed, but the XADD failed: to be requeued
        self._cancels: set[int] = set()  # running jobs whose cancel was asked
        self._ended: set[int] = set()  # jobs whose result was recorded while the registry was being read
        self._gone_since: dict[str, float] = {}  # worker ids seen gone -> when (monotonic), for the set's cleanup
        self._groups: set[str] = set()  # inboxes whose consumer group exists (this connection)
        self._recording = 0  # results being recorded now
        self._recorded = asyncio.Event()  # set while nothing is being recorded
        self._recorded.set()
        self._wakeup = asyncio.Event()  # a job or a slot may be free: the scheduler looks
        self._events_from = b"$"  # the last event read (XREAD), "$" before the first
        self._supervisor: asyncio.Task[None] | None = None
        self._client: Redis | None = None
        self._unlisten: Callable[[], None] | None = None
        self.reconnections = 0  # successful connections after the first (tests, metrics)
        self.rounds = 0  # scheduler rounds done (tests wait for a few instead of sleeping)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor; returns at once (Redis may be down: jobs wait, the status says so)."""
        if self._supervisor is None:
            self._unlisten = self.events.listen(self._heard)
            self._supervisor = asyncio.create_task(self._supervise(), name="pool-dispatcher")

    async def stop(self) -> None:
        """Stop dispatching and reading. Jobs running on workers keep running; the next start reconciles them."""
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor)
            self._supervisor = None
        self._online = False

    def _heard(self, event: object) -> None:
        if isinstance(event, JobSubmitted):
            self._wakeup.set()

    def wake(self) -> None:
        """Look for a job to dispatch now (a submit, a resume)."""
        self._wakeup.set()

    async def _connect(self) -> Redis:
        made = self._factory()
        client = await made if isinstance(made, Awaitable) else made
        try:
            await client.ping()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise
        return client

    async def _supervise(self) -> None:
        pause = FIRST_PAUSE
        connected_before = False
        complained = False  # the outage was logged (once each)
        while True:
            client: Redis | None = None
            try:
                try:
                    client = await self._connect()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # REDIS_ERRORS, or connection.py's RedisUnavailable wrapping them
                    if not complained:
                        log.warning("Redis unreachable (%s); jobs wait in the queue, retrying", e)
                        complained = True
                    raise _Unreachable from None
                if connected_before:
                    self.reconnections += 1
                    log.info("Redis answers again; dispatching")
                connected_before, complained = True, False
                pause = FIRST_PAUSE
                await self._session(client)
            except asyncio.CancelledError:
                raise
            except _Unreachable:
                pass
            except REDIS_ERRORS as e:
                if not complained:
                    log.warning("Redis unreachable (%s); jobs wait in the queue, retrying", e)
                    complained = True
            except Exception:
                log.exception("the pool dispatcher failed; starting it again")
            finally:
                self._online = False
                self._client = None
                self._groups.clear()
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    async def _session(self, client: Redis) -> None:
        """One connection's life: groups, pending results, reconciliation, then the three loops until one fails."""
        await self._ensure_group(client, self.keys.results, BOT_GROUP)
        await self._record_results(client, b"0")  # read before a crash or a disconnection, not yet recorded
        await self._record_results(client, b">")  # sent while the bot was away
        await self._refresh(client)  # requeues what runs on no live worker
        await self._requeue_unsent(client)  # and what never reached its (live) worker's inbox
        self._client = client
        self._online = True
        for job_id in list(self._cancels):
            await self._send_cancel(client, job_id)
        self._wakeup.set()
        tasks = [
            asyncio.create_task(self._schedule(client), name="pool-scheduler"),
            asyncio.create_task(self._read_results(client), name="pool-results"),
            asyncio.create_task(self._read_events(client), name="pool-events"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the failure
        finally:
            await cancel_and_wait(*tasks)

    async def _ensure_group(self, client: Redis, stream: str, group: str) -> None:
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- scheduling ------------------------------------------------------------------------------

    async def _schedule(self, client: Redis) -> None:
        """The registry, failover and dispatch, in one task (so a dispatch never races a reconciliation)."""
        next_refresh = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            self.rounds += 1
            try:
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self.poll
                    await self._refresh(client)
                while await self._dispatch_one(client):
                    pass
            except REDIS_ERRORS:
                raise
            except Exception:  # a busy database: the next round tries again
                log.exception("dispatching failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, next_refresh - loop.time()))

    async def _refresh(self, client: Redis) -> None:
        """Read the registry; requeue the running jobs whose worker is not alive; clean up gone workers."""
        self._ended = set()
        snapshot = await self._registry.read(client)
        if self._unsent:
            outcome = await self.queue.jobs.requeue(list(self._unsent.values()), attempt_counts=False)
            self._unsent.clear()
            self._after_requeue(outcome, "could not be sent")
        dispatches = await self.queue.jobs.dispatches()
        orphans = [d for d in dispatches if not snapshot.alive(d.worker) or d.token is None]
        if orphans:
            outcome = await self.queue.jobs.requeue(orphans)
            workers = sorted({str(d.worker) for d in orphans})
            self._after_requeue(outcome, f"their worker is gone ({', '.join(workers)[:200]})")
        orphaned = {d.job_id for d in orphans}
        # A result recorded while `dispatches` was read has freed its slot already: it must not come back.
        self._inflight = {d.job_id: d for d in dispatches if d.job_id not in orphaned and d.job_id not in self._ended}
        self._cancels &= set(self._inflight)  # the others have ended
        now = time.monotonic()
        for worker_id in snapshot.gone:
            first = self._gone_since.setdefault(worker_id, now)
            await self._clear_inbox(client, worker_id)
            if now - first > self.visibility_timeout:  # a worker may add itself to the set just before its beat
                await client.srem(self.keys.workers, worker_id)
                del self._gone_since[worker_id]
        for worker_id in list(self._gone_since):
            if worker_id not in snapshot.gone:
                del self._gone_since[worker_id]

    async def _requeue_unsent(self, client: Redis) -> None:
        """At each (re)connection, after every result was recorded: a job running on a live worker whose dispatch is
        not in that worker's inbox never reached it (the bot died between the claim and the XADD, or Redis lost the
        entry), so it goes back to the queue without counting the attempt. An entry stays in the inbox after its
        worker acknowledges it (only the oldest acknowledged ones are trimmed), and a job whose worker sent its
        result was recorded (and is no longer running) before this runs."""
        by_worker: dict[str, list[Dispatch]] = {}
        for dispatch in self._inflight.values():
            if dispatch.worker is not None and dispatch.token is not None:
                by_worker.setdefault(dispatch.worker, []).append(dispatch)
        unsent: list[Dispatch] = []
        for worker_id, dispatches in by_worker.items():
            entries: Any = await client.xrange(self.keys.inbox(worker_id))
            sent = set()
            for _, fields in entries:
                with contextlib.suppress(ProtocolError):
                    message = JobMessage.from_fields(fields or {})
                    sent.add((message.job_id, message.token))
            unsent.extend(d for d in dispatches if (d.job_id, d.token) not in sent)
        if unsent:
            outcome = await self.queue.jobs.requeue(unsent, attempt_counts=False)
            self._after_requeue(outcome, "their dispatch never reached the worker")

    def _after_requeue(self, outcome: Requeued, why: str) -> None:
        if outcome.requeued:
            log.warning("jobs %s queued again: %s", outcome.requeued, why)
            self.queue.announce()
        for job_id in outcome.failed:
            log.warning("job %s failed: it stopped its worker every time it ran", job_id)
            self.events.publish(JobFinished(job_id, JobState.FAILED.value, GAVE_UP_WORKER))
        for job_id in outcome.cancelled:
            self.events.publish(JobFinished(job_id, JobState.CANCELLED.value))
        for job_id in [*outcome.requeued, *outcome.failed, *outcome.cancelled]:
            self._inflight.pop(job_id, None)
            self._cancels.discard(job_id)
        self._wakeup.set()

    async def _clear_inbox(self, client: Redis, worker_id: str) -> None:
        """A gone worker's inbox: its pending entries claimed by the reaper and acknowledged, then the stream
        deleted (its jobs were requeued from SQLite, the system of record)."""
        inbox = self.keys.inbox(worker_id)
        self._groups.discard(inbox)  # made again before the next dispatch to a worker of that id
        if not await client.exists(inbox):
            return
        start: Any = "0-0"
        taken: list[int] = []
        try:
            while True:
                reply = await client.xautoclaim(inbox, WORKER_GROUP, REAPER_CONSUMER, 0, start, count=100)
                start, entries = reply[0], reply[1]
                ids = [entry_id for entry_id, _ in entries]
                for _, fields in entries:
                    with contextlib.suppress(ProtocolError):
                        taken.append(JobMessage.from_fields(fields or {}).job_id)
                if ids:
                    await client.xack(inbox, WORKER_GROUP, *ids)
                if start in (b"0-0", "0-0") or not entries:
                    break
        except ResponseError as e:  # no group: nothing was ever read
            if "NOGROUP" not in str(e):
                raise
        unread = await client.xlen(inbox)
        await client.delete(inbox)
        log.warning("worker %s is gone: its inbox (%d entries, jobs %s pending) deleted", worker_id, unread, taken)

    def _idle_slots(self, snapshot: Snapshot) -> dict[str, int]:
        busy: dict[str, int] = {}
        for dispatch in self._inflight.values():
            if dispatch.worker is not None:
                busy[dispatch.worker] = busy.get(dispatch.worker, 0) + 1
        return {
            worker_id: beat.slots - busy.get(worker_id, 0)
            for worker_id, beat in snapshot.live.items()
            if beat.slots - busy.get(worker_id, 0) > 0
        }

    def _choose(self, model: str, idle: Mapping[str, int], snapshot: Snapshot) -> str:
        """The idle worker for a job of `model`: one holding it (in use first), then one holding nothing, then
        any that serves it; the least busy, then the first by id."""

        def rank(worker_id: str) -> tuple[int, int, str]:
            beat = snapshot.live[worker_id]
            if beat.loaded[:1] == (model,):
                holds = 0
            elif model in beat.loaded:
                holds = 1
            elif not beat.loaded:
                holds = 2
            else:
                holds = 3
            return holds, beat.slots - idle[worker_id], worker_id

        candidates = [worker_id for worker_id in idle if model in snapshot.live[worker_id].models]
        return min(candidates, key=rank)

    async def _dispatch_one(self, client: Redis) -> bool:
        """Claim the next job in fair order among the models idle workers serve, and hand it to one of them.
        False when there is nothing to do."""
        snapshot = self._registry.snapshot
        idle = self._idle_slots(snapshot)
        if not idle:
            return False
        models = {model for worker_id in idle for model in snapshot.live[worker_id].models}
        model = await self.queue.jobs.next_waiting_model(models) if models else None
        if model is None:
            return False
        worker_id = self._choose(model, idle, snapshot)
        token = new_token()
        job = await self.queue.claim(worker_id, models=(model,), token=token)
        if job is None:
            return False  # paused, or the job went meanwhile
        dispatch = Dispatch(job.id, worker_id, token, job.attempts, job.cancelled_by)
        self._inflight[job.id] = dispatch
        try:
            source = await self.queue.source_png(job)  # img2img, vary, upscale: the image travels with the job
        except OSError as e:
            log.error("job %s: its source image cannot be read: %s", job.id, e)
            return await self._unsendable(job.id, token, SOURCE_GONE)
        try:
            message = JobMessage(
                job_id=job.id,
                attempt=job.attempts,
                token=token,
                model=job.model,
                params=WireParams.of(job.params),
                sent_at=time.time(),
            )
            fields = message.fields(source)
        except ValueError as e:  # beyond the wire's bounds (pydantic's ValidationError and ProtocolError are)
            log.error("job %s cannot be sent to a worker: %s", job.id, e)
            return await self._unsendable(job.id, token, UNSENDABLE)
        inbox = self.keys.inbox(worker_id)
        try:
            if inbox not in self._groups:
                await self._ensure_group(client, inbox, WORKER_GROUP)
                self._groups.add(inbox)
            await xadd(client, inbox, fields, maxlen=INBOX_MAXLEN, approximate=True)
        except REDIS_ERRORS:
            self._inflight.pop(job.id, None)
            self._unsent[job.id] = dispatch  # requeued at the next connection (or now, if the database lets us)
            with contextlib.suppress(Exception):
                outcome = await self.queue.jobs.requeue([dispatch], attempt_counts=False)
                self._unsent.pop(job.id, None)
                self._after_requeue(outcome, "Redis went away while it was sent")
            raise
        log.debug("job %s (attempt %d) handed to %s", job.id, job.attempts, worker_id)
        return True

    # -- results ---------------------------------------------------------------------------------

    async def _unsendable(self, job_id: int, token: str, reason: str) -> bool:
        """A claimed job that cannot be handed to any worker: failed with `reason` (True: the scheduler goes on)."""
        self._inflight.pop(job_id, None)
        if await self.queue.jobs.fail(job_id, reason, token):
            self.events.publish(JobFinished(job_id, JobState.FAILED.value, reason))
        return True

    async def _read_results(self, client: Redis) -> None:
        pending = True  # a result left pending (not recorded yet): read the pending list again first
        while True:
            if pending:
                pending = not await self._record_results(client, b"0")
                if pending:
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
            reply = await client.xreadgroup(
                BOT_GROUP, BOT_CONSUMER, {self.keys.results: b">"}, count=16, block=max(1, int(self.poll * 1000))
            )
            for entry_id, fields in entries_of(reply):
                if not await self._record_entry(client, entry_id, fields):
                    pending = True

    async def _record_results(self, client: Redis, start: bytes) -> bool:
        """Record the results from `start`: b"0" the pending ones (read, not acknowledged), b">" the unread
        ones, until there are none. False if one could not be recorded (it stays pending)."""
        after = b"0-0"
        while True:
            stream_id = after if start == b"0" else b">"
            reply = await client.xreadgroup(BOT_GROUP, BOT_CONSUMER, {self.keys.results: stream_id}, count=64)
            entries = entries_of(reply)
            if not entries:
                return True
            for entry_id, fields in entries:
                if not await self._record_entry(client, entry_id, fields):
                    return False
                after = entry_id

    async def _record_entry(self, client: Redis, entry_id: bytes, fields: Mapping[bytes, bytes]) -> bool:
        """Record one result entry and acknowledge it. False when it could not be recorded now (left pending)."""
        self._recording += 1
        self._recorded.clear()
        try:
            try:
                message, pngs = ResultMessage.from_fields(fields, self.max_result_bytes)
            except ProtocolError as e:
                await self._dead_letter(client, fields, self.keys.results, str(e))
            else:
                dispatch = self._inflight.get(message.job_id)
                if dispatch is not None and (dispatch.worker, dispatch.token) == (message.worker, message.token):
                    # The worker is idle from the moment it sent this: its next job is claimed while this result
                    # is recorded (a result that then cannot be recorded stays pending, the job running).
                    self._free_slot(message.job_id)
                try:
                    ignored = await self._recorder.record(message, pngs)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("job %s: the result could not be recorded now; trying again", message.job_id)
                    return False
                if ignored is not None:
                    log.warning(
                        "ignored a result for job %s (attempt %d) from worker %s: %s",
                        message.job_id, message.attempt, message.worker, ignored,
                    )
                else:
                    log.info("job %s: %s by %s", message.job_id, message.outcome, message.worker)
                    self._free_slot(message.job_id)
                    self._cancels.discard(message.job_id)
            # Acknowledged, then deleted: the bot is the stream's only reader, and a result carries PNG bytes.
            async with client.pipeline(transaction=True) as pipe:
                pipe.xack(self.keys.results, BOT_GROUP, entry_id)
                pipe.xdel(self.keys.results, entry_id)
                await pipe.execute()
            return True
        finally:
            self._recording -= 1
            if not self._recording:
                self._recorded.set()

    def _free_slot(self, job_id: int) -> None:
        """The job's worker slot is free: the scheduler may hand that worker its next job."""
        self._inflight.pop(job_id, None)
        self._ended.add(job_id)
        self._wakeup.set()

    async def _dead_letter(self, client: Redis, fields: Mapping[bytes, bytes], source: str, reason: str) -> None:
        log.warning("dead-lettered an entry of %s: %s", source, reason)
        await xadd(client, self.keys.dead, dead_letter(fields, source, reason), maxlen=DEAD_MAXLEN, approximate=True)

    # -- progress --------------------------------------------------------------------------------

    async def _read_events(self, client: Redis) -> None:
        while True:
            reply = await client.xread(
                {self.keys.events: self._events_from}, count=256, block=max(1, int(self.poll * 1000))
            )
            for entry_id, fields in entries_of(reply):
                self._events_from = entry_id
                await self._on_event(client, fields)

    async def _on_event(self, client: Redis, fields: Mapping[bytes, bytes]) -> None:
        try:
            event = EventMessage.from_fields(fields)
        except ProtocolError as e:
            await self._dead_letter(client, fields, self.keys.events, str(e))
            return
        if event.kind == "loading":
            if event.model is not None:
                self.events.publish(ModelLoading(event.model, event.stage, event.done, event.stages))
            return
        dispatch = self._inflight.get(event.job_id or 0)
        if dispatch is None or dispatch.worker != event.worker or dispatch.token != event.token:
            return  # a job not (or no longer) handed to that worker
        if event.kind == "progress":
            eta = StepProgress(event.step, event.total, event.elapsed).eta
            self.events.publish(JobProgress(dispatch.job_id, event.step, event.total, event.elapsed, eta))
            if dispatch.job_id in self._cancels:
                await self._send_cancel(client, dispatch.job_id)  # it runs on: the cancel was missed

    # -- Executor ------------------------------------------------------------------------------------

    async def cancel(self, job_id: int) -> None:
        """Stop a running job between steps (its cancel was recorded by the queue): PUBLISH on its worker's control
        channel, and SET the cancel key so a worker that has not started it yet skips it. Sent again when Redis
        comes back, and when progress of the job shows that the worker missed it."""
        self._cancels.add(job_id)
        client = self._client
        if client is None:
            return
        try:
            await self._send_cancel(client, job_id)
        except REDIS_ERRORS as e:
            log.warning("job %s: the cancel could not be sent now (%s); it is sent when Redis answers", job_id, e)

    async def _send_cancel(self, client: Redis, job_id: int) -> None:
        dispatch = self._inflight.get(job_id) or await self.queue.jobs.dispatch(job_id)
        if dispatch is None or dispatch.worker is None or dispatch.token is None:
            self._cancels.discard(job_id)  # finished, or requeued (which cancels it)
            return
        message = ControlMessage(job_id=job_id, token=dispatch.token)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.cancel(job_id, dispatch.token), b"1", ex=CANCEL_TTL)
            pipe.publish(self.keys.control(dispatch.worker), message.to_json())
            await pipe.execute()

    def busy(self) -> bool:
        """A job runs on a worker, or a result is being recorded."""
        return bool(self._inflight) or self._recording > 0

    async def idle(self) -> None:
        """Every result read so far is recorded."""
        await self._recorded.wait()

    def _serving(self, spec: ModelSpec) -> list[Heartbeat]:
        return self._registry.snapshot.serving(spec.name)

    def _budget(self, spec: ModelSpec) -> int | None:
        """The largest budget among the live workers that serve `spec` (None: unknown, or no worker online)."""
        budgets = [beat.budget for beat in self._serving(spec)]
        if not budgets or any(budget is None for budget in budgets):
            return None
        return max(budget for budget in budgets if budget is not None)

    def plan(self, spec: ModelSpec, width: int, height: int, count: int) -> JobPlan | None:
        """How the job would run on the live worker with the most memory that serves its model; None only when
        none of them could ever fit it. No live worker: accepted (it waits for one)."""
        footprint = reference_footprint(spec)
        budget = self._budget(spec)
        return plan_job(budget, footprint, width, height, count, resolve_mode(spec.memory, budget, footprint))

    def refusal(self, spec: ModelSpec, width: int, height: int, count: int) -> str:
        need = estimate_peak(reference_footprint(spec), width, height, count, "minimal", 1)
        budget = self._budget(spec) or 0
        return f"This needs about {gib(need)} of GPU memory and {gib(budget)} is usable. Try a smaller size."

    def memory_status(self, spec: ModelSpec) -> MemoryStatus:
        return memory_status(spec, self._budget(spec), reference_footprint(spec))

    async def switch_model(self, spec: ModelSpec) -> None:
        """Nothing to load: workers load a model when its first job comes, and one holding it gets its jobs first.
        Raises ModelLoadError when workers are online and none of them serves the model."""
        snapshot = self._registry.snapshot
        if snapshot.live and not snapshot.serving(spec.name):
            raise ModelLoadError(f"No worker online serves {spec.name}.")

    def status(self) -> ExecutorStatus:
        """From the last registry read: no I/O."""
        snapshot = self._registry.snapshot
        running = {d.job_id: str(d.worker) for d in self._inflight.values() if d.worker is not None}
        workers = []
        for worker_id, beat in sorted(snapshot.live.items()):
            mine = sorted(job_id for job_id, worker in running.items() if worker == worker_id)
            workers.append(
                WorkerStatus(
                    id=worker_id,
                    device=beat.device,
                    models=beat.models,
                    loaded=beat.loaded,
                    busy_job=mine[0] if mine else None,  # the bot's record, not the heartbeat's (it lags)
                    budget=beat.budget,
                )
            )
        return ExecutorStatus("redis", self._online, tuple(workers), running)
