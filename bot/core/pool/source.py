"""The worker process's side of the pool: `RedisJobSource`, the JobSource of a GpuWorker that serves a bot through
Redis (docs/scaling.md), with the worker's heartbeat and its control channel (cancel).

- Jobs: the worker's inbox stream, read through the consumer group "workers" one entry at a time, only when the
  GpuWorker asks for its next job. First the entries this worker id read before and never acknowledged (a crash,
  a restart with the same `--id`), then new ones. An entry that does not validate is dead-lettered and
  acknowledged; a job of a model this worker does not serve is reported failed; a job whose cancel key is set is
  reported cancelled without running.
- Images: the GpuWorker writes them into this worker's spool folder; the source reads them back, sends the result
  (PNG bytes, at most [workers] max_result_mb, else a failed result that says so) to the results stream, and only
  once it is there acknowledges the inbox entry, then deletes the files. While Redis cannot be reached, recording
  raises SourceBusy: the GpuWorker retries until it can, so a result is never lost.
- Events (started, progress at most every PROGRESS_INTERVAL per job and always the last step, model loading) go to
  the events stream from one sender task; one that cannot be sent is dropped, it never fails a job.
- Heartbeat: `P:worker:{id}` (what the worker serves and holds, its device and memory, the jobs it has read and not
  finished), expiring after the visibility timeout, rewritten every heartbeat interval; deleted at a clean stop so
  the bot hands this worker's unfinished jobs to another at once. One id, one live worker: a worker whose id
  another live worker announces (another host, or a process alive on this one) does not start, and a worker that
  finds its key rewritten by another one stops (WorkerIdInUse); the key of a process of this host that is gone
  (killed, restarted with the same id) is taken over.
- Control: `P:control:{id}` (pub/sub): a cancel of the job running here stops it between two steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.exceptions import ResponseError, WatchError
from redis.typing import EncodableT, FieldT

from bot.core.pool.connection import UNREACHABLE, RedisUnavailable, reachable
from bot.core.pool.protocol import (
    DEAD_MAXLEN,
    EVENTS_MAXLEN,
    MAX_ERROR_CHARS,
    WORKER_GROUP,
    ControlMessage,
    EventMessage,
    Heartbeat,
    ImageMeta,
    JobMessage,
    Keys,
    Outcome,
    ProtocolError,
    ResultMessage,
    check_id,
    dead_letter,
)
from inference.specs import ModelSpec
from inference.types import LoadProgress, SavedImage, SourceBusy, StepProgress, WorkItem

if TYPE_CHECKING:
    from bot.config import WorkersSettings

log = logging.getLogger(__name__)

BLOCK_MS = 2_000  # one inbox read waits this long for a job (below connection.SOCKET_TIMEOUT)
PROGRESS_INTERVAL = 0.25  # seconds between two progress events of one job (the last step is always sent)
REMEMBERED_CANCELS = 1_000  # cancels received for jobs not (yet) read here, kept for when they are read
LISTEN_RETRY_MAX = 5.0  # the longest pause before the control channel is subscribed to again


# Errors that leave an event unsent, a heartbeat key undeleted: logged, never raised.
_SEND_ERRORS: tuple[type[BaseException], ...] = (*UNREACHABLE, ResponseError, TimeoutError)


def _entry(fields: Mapping[str, bytes]) -> dict[FieldT, EncodableT]:
    """A message's stream fields in redis-py's types."""
    return {key: value for key, value in fields.items()}


@dataclass(frozen=True)
class DeviceState:
    """What the heartbeat says of the worker's device: its name, the models it holds (the one in use first) and
    its memory in bytes (None: unknown, e.g. the CPU)."""

    device: str = ""
    loaded: tuple[str, ...] = ()
    budget: int | None = None
    free: int | None = None


@dataclass
class _Job:
    """A job read from the inbox and not finished (its entry is pending until its result is sent)."""

    entry: bytes  # the inbox entry's id
    message: JobMessage
    paths: tuple[Path, ...]
    started: float  # time.monotonic() when it was read
    result: dict[str, bytes] | None = None  # the results stream entry, built once
    outcome: str = ""
    sent: bool = False  # the result is in the results stream (only the acknowledgement is left)


class WorkerIdInUse(Exception):
    """Another live worker announces itself under this worker's id (the message says which, in one line)."""


def _process_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host (one of another user counts)."""
    if pid <= 0:
        return True  # unknown: assume the other worker lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The entries of a one-stream XREADGROUP reply ([[stream, [(id, fields), ...]]], connect()'s RESP2)."""
    return list(reply[0][1]) if reply else []


class RedisJobSource:
    """A GpuWorker's JobSource on the pool's Redis (see the module's docstring). Called on the event loop."""

    def __init__(
        self,
        client: redis.Redis,
        settings: WorkersSettings,
        worker_id: str,
        models: Mapping[str, ModelSpec],
        spool: Path,
        *,
        state: Callable[[], DeviceState] | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.worker_id = check_id(worker_id)
        self.models = dict(models)
        self.spool = spool
        self.keys = Keys(settings.prefix)
        self.inbox = self.keys.inbox(worker_id)
        self.cancel_job: Callable[[int], bool] | None = None  # GpuWorker.cancel, set by the worker process
        self._state = state or DeviceState
        self._jobs: dict[int, _Job] = {}
        self._deferred: list[tuple[bytes, dict[bytes, bytes]]] = []  # a second entry of a job running here
        self._cursor: bytes | str = "0"  # "0": this consumer's pending entries are read first; then ">"
        self._group_ready = False
        self._closing = False
        self._cancels: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._events: dict[tuple[str, object], EventMessage] = {}
        self._events_ready = asyncio.Event()
        self._last_progress: dict[int, float] = {}
        self._beat_now = asyncio.Event()
        self._beaten = False  # this worker's heartbeat was written at least once
        self._stopped = False  # stop() was called: the heartbeat loop ends even if redis-py swallowed its cancellation
        self.id_taken = asyncio.Event()  # another live worker announces itself under our id: stop
        self.id_taken_by = ""  # why (one line)
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.time()
        self._host = socket.gethostname()[:255]

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Empty the spool folder (images of a previous run: their jobs are read again) and start the heartbeat,
        the control channel's listener and the event sender. Redis need not be up: each of them retries."""
        await asyncio.to_thread(self._clear_spool)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat(), name="pool-heartbeat"),
            loop.create_task(self._listen(), name="pool-control"),
            loop.create_task(self._send_events(), name="pool-events"),
        ]

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the tasks and delete the heartbeat key, so the bot hands this worker's unfinished jobs (their
        entries stay pending) to another worker at once. If Redis cannot be reached, the key expires by itself
        after the visibility timeout."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.id_taken.is_set():
            return  # the key is the other worker's now
        try:
            await asyncio.wait_for(self.client.delete(self.keys.worker(self.worker_id)), timeout)
            log.info("worker %s: heartbeat removed", self.worker_id)
        except _SEND_ERRORS as e:
            log.warning(
                "worker %s: could not remove the heartbeat (%s); it expires in %gs",
                self.worker_id, type(e).__name__, self.settings.visibility_timeout,
            )

    def _clear_spool(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool.glob("*.png"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    @property
    def busy(self) -> tuple[int, ...]:
        """The jobs read and not finished (running, or their result being saved or sent)."""
        return tuple(self._jobs)

    # -- JobSource: reading jobs -----------------------------------------------------------------

    def stop_reading(self) -> None:
        """Hand out no more jobs: next_job() raises CancelledError from now on. Called before GpuWorker.stop():
        next_job() loops over blocking reads of the inbox, and on Python 3.11 redis-py can swallow a cancellation
        that arrives during one, so the cancellation alone may not end that loop."""
        self._closing = True

    async def next_job(self) -> WorkItem:
        while True:
            if self._closing:
                raise asyncio.CancelledError()
            try:
                with reachable("reading the inbox"):
                    entry = await self._read_entry()
                    item = None if entry is None else await self._accept(*entry)
            except RedisUnavailable as e:
                # An entry Redis delivered while its reply was lost is pending for this consumer: read them again.
                self._cursor = "0"
                raise SourceBusy(str(e)) from None
            if item is not None:
                return item

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's first entry: any entry already there was XADDed for this worker (by a bot that
            # dispatched before this group existed, or after the reaper deleted the inbox of a worker that was
            # taken for dead), so none must be skipped.
            await self.client.xgroup_create(self.inbox, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def _holds(self, entry_id: bytes) -> bool:
        return any(job.entry == entry_id for job in self._jobs.values()) or any(
            deferred == entry_id for deferred, _ in self._deferred
        )

    async def _read_entry(self) -> tuple[bytes, dict[bytes, bytes]] | None:
        """The next inbox entry to look at (None: none yet; ask again)."""
        for i, (entry_id, fields) in enumerate(self._deferred):
            if self._job_id_of(fields) not in self._jobs:
                del self._deferred[i]
                return entry_id, fields
        await self._ensure_group()
        reading_pending = self._cursor != ">"
        try:
            reply = await self.client.xreadgroup(
                WORKER_GROUP, self.worker_id, {self.inbox: self._cursor}, count=1,
                block=None if reading_pending else BLOCK_MS,
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("worker %s: the inbox's consumer group is gone (reaped?); creating it again", self.worker_id)
            self._group_ready = False
            self._cursor = "0"
            return None
        entries = _stream_entries(reply)
        if not entries:
            if reading_pending:
                self._cursor = ">"  # every entry read before is being handled: new ones from now on
            return None
        entry_id, raw = entries[0]
        fields = dict(raw or {})
        if reading_pending:
            self._cursor = entry_id
            if self._holds(entry_id):
                return None
            log.info("worker %s: inbox entry %s was read before and not finished: handling it", self.worker_id,
                     entry_id.decode())
        return entry_id, fields

    @staticmethod
    def _job_id_of(fields: Mapping[bytes, bytes]) -> int | None:
        try:
            return JobMessage.from_fields(fields).job_id
        except ProtocolError:
            return None

    async def _accept(self, entry_id: bytes, fields: dict[bytes, bytes]) -> WorkItem | None:
        """The WorkItem of an inbox entry, or None when the entry was handled without running (dead-lettered,
        reported failed or cancelled), or deferred. The job is registered only after the last await, so a
        Redis error on the way leaves nothing half-registered (its entry is read again)."""
        if not fields:  # deleted from the stream while pending: nothing to run
            log.warning("worker %s: inbox entry %s has no fields; acknowledged", self.worker_id, entry_id.decode())
            await self.client.xack(self.inbox, WORKER_GROUP, entry_id)
            return None
        try:
            message = JobMessage.from_fields(fields)
            source = await asyncio.to_thread(message.checked_source, fields)  # hashing megabytes: off the loop
        except ProtocolError as e:
            log.error("worker %s: inbox entry %s dead-lettered: %s", self.worker_id, entry_id.decode(), e)
            await self.client.xadd(
                self.keys.dead, _entry(dead_letter(fields, self.inbox, str(e))), maxlen=DEAD_MAXLEN, approximate=True
            )
            await self.client.xack(self.inbox, WORKER_GROUP, entry_id)
            return None
        if message.job_id in self._jobs:  # handed out again while it runs here: after this run
            log.warning("job %s: handed out again while it runs here; it waits for this run", message.job_id)
            self._deferred.append((entry_id, fields))
            return None
        spec = self.models.get(message.model)
        if spec is None:
            reason = f"The worker {self.worker_id} does not serve the model {message.model}."
            log.error("job %s: refused: %s", message.job_id, reason)
            await self._send(entry_id, self._result(message, "failed", error=reason).fields([]))
            return None
        cancelled = (message.job_id, message.token) in self._cancels or bool(
            await self.client.exists(self.keys.cancel(message.job_id, message.token))
        )
        if cancelled:
            log.info("job %s: cancelled before it started", message.job_id)
            await self._send(entry_id, self._result(message, "cancelled").fields([]))
            return None
        paths = tuple(
            self.spool / f"{message.job_id}-{message.attempt}-{i}.png" for i in range(len(message.params.seeds))
        )
        self._jobs[message.job_id] = _Job(entry_id, message, paths, time.monotonic())
        self._event(("started", message.job_id), kind="started", job_id=message.job_id, token=message.token)
        self._beat_now.set()
        log.info(
            "job %s: started (model %s, attempt %d, %d image(s) %dx%d, %d steps)",
            message.job_id, message.model, message.attempt, len(message.params.seeds),
            message.params.width, message.params.height, message.params.steps,
        )
        return WorkItem(message.job_id, spec, message.params.to_params(), paths, source)

    async def _send(self, entry_id: bytes, result: Mapping[str, bytes]) -> None:
        """The result into the results stream, then (only then) the inbox entry acknowledged."""
        await self.client.xadd(self.keys.results, _entry(result))
        await self.client.xack(self.inbox, WORKER_GROUP, entry_id)

    def _result(
        self,
        message: JobMessage,
        outcome: Outcome,
        *,
        error: str | None = None,
        images: tuple[ImageMeta, ...] = (),
        run_seconds: float = 0.0,
    ) -> ResultMessage:
        return ResultMessage(
            job_id=message.job_id,
            attempt=message.attempt,
            token=message.token,
            worker=self.worker_id,
            outcome=outcome,
            error=None if error is None else error[:MAX_ERROR_CHARS],
            images=images,
            run_seconds=max(0.0, run_seconds),
        )

    # -- JobSource: events -----------------------------------------------------------------------

    def on_progress(self, job_id: int, progress: StepProgress) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        now = time.monotonic()
        last = self._last_progress.get(job_id)
        if progress.step < progress.total and last is not None and now - last < PROGRESS_INTERVAL:
            return
        self._last_progress[job_id] = now
        self._event(
            ("progress", job_id), kind="progress", job_id=job_id, token=job.message.token,
            step=progress.step, total=progress.total, elapsed=max(0.0, progress.elapsed),
        )

    def on_model_loading(self, model: str, progress: LoadProgress) -> None:
        self._event(
            ("loading", model), kind="loading", model=model, stage=progress.stage[:100],
            done=progress.done, stages=progress.total,
        )
        if progress.stage == "ready":
            self._beat_now.set()  # the heartbeat says what it holds now

    def _event(self, key: tuple[str, object], **fields: Any) -> None:
        """Queue an event for the sender; a newer one of the same kind and job (or model) replaces it."""
        try:
            message = EventMessage(worker=self.worker_id, **fields)
        except ValueError as e:  # out of the protocol's bounds: not worth failing anything for
            log.debug("event %s dropped: %s", key, e)
            return
        self._events.pop(key, None)
        self._events[key] = message
        self._events_ready.set()

    async def _send_events(self) -> None:
        failing = False
        while True:
            await self._events_ready.wait()
            self._events_ready.clear()
            while self._events:
                key = next(iter(self._events))
                message = self._events.pop(key)
                try:
                    await self.client.xadd(
                        self.keys.events, _entry(message.fields()), maxlen=EVENTS_MAXLEN, approximate=True
                    )
                    failing = False
                except _SEND_ERRORS as e:
                    if not failing:
                        log.warning("worker %s: events are not sent (%s: %s)", self.worker_id, type(e).__name__, e)
                    failing = True

    # -- JobSource: outcomes ---------------------------------------------------------------------

    async def on_done(self, job_id: int, images: list[SavedImage]) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            log.warning("job %s: done, but not read here (already recorded?)", job_id)
            return
        if job.result is None:
            pngs = await asyncio.to_thread(lambda: [image.path.read_bytes() for image in images])
            job.result, job.outcome = self._done_result(job, images, pngs)
        await self._finish(job)

    def _done_result(self, job: _Job, images: list[SavedImage], pngs: list[bytes]) -> tuple[dict[str, bytes], str]:
        run_seconds = time.monotonic() - job.started
        limit = self.settings.max_result_bytes
        size = sum(len(png) for png in pngs)
        try:
            metas = tuple(
                ImageMeta(index=i.index, seed=i.seed, width=i.width, height=i.height, parameters=i.parameters)
                for i in images
            )
            message = self._result(job.message, "done", images=metas, run_seconds=run_seconds)
            return message.fields(pngs, limit), "done"
        except ValueError as e:  # ProtocolError, or a pydantic ValidationError
            if size > limit:
                error = (
                    f"The images are too large to send back from the worker: {size / 2**20:.1f} MB, "
                    f"the limit is {limit / 2**20:.1f} MB."
                )
            else:
                error = "The images could not be sent back from the worker."
            log.error("job %s: %s (%s)", job.message.job_id, error, e)
            failed = self._result(job.message, "failed", error=error, run_seconds=run_seconds)
            return failed.fields([]), f"failed: {error}"

    async def on_failed(self, job_id: int, message: str) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job.result is None:
            result = self._result(job.message, "failed", error=message, run_seconds=time.monotonic() - job.started)
            job.result, job.outcome = result.fields([]), f"failed: {message}"
        await self._finish(job)

    async def on_cancelled(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job.result is None:
            result = self._result(job.message, "cancelled", run_seconds=time.monotonic() - job.started)
            job.result, job.outcome = result.fields([]), "cancelled"
        await self._finish(job)

    async def _finish(self, job: _Job) -> None:
        """Send the job's result, acknowledge its entry, forget it, delete its files. SourceBusy while Redis cannot
        be reached (the GpuWorker calls again; a result already sent is not sent twice)."""
        assert job.result is not None
        try:
            with reachable("sending a result"):
                if not job.sent:
                    await self.client.xadd(self.keys.results, _entry(job.result))
                    job.sent = True
                await self.client.xack(self.inbox, WORKER_GROUP, job.entry)
                if job.message.params.source is not None:
                    # Its result is in the results stream (recorded before the bot looks for unsent dispatches):
                    # the entry and the image it carries are not kept in Redis with the acknowledged ones.
                    await self.client.xdel(self.inbox, job.entry)
        except RedisUnavailable as e:
            raise SourceBusy(str(e)) from None
        job_id = job.message.job_id
        self._jobs.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self._beat_now.set()
        log.info("job %s: %s in %.1fs", job_id, job.outcome, time.monotonic() - job.started)
        await asyncio.to_thread(self._delete, job.paths)

    @staticmethod
    def _delete(paths: tuple[Path, ...]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()

    # -- heartbeat -------------------------------------------------------------------------------

    async def beat(self) -> Heartbeat:
        """Write the heartbeat once (raises redis-py's errors) and return it. Raises WorkerIdInUse, writing nothing,
        when the key holds another live worker's heartbeat. The key is read, checked and written in one optimistic
        transaction (WATCH): a heartbeat another worker writes between our read and our write aborts our write, and
        the next round reads it."""
        try:
            state = await asyncio.to_thread(self._state)
        except Exception as e:  # a device that cannot be asked now: the heartbeat goes out without it
            log.debug("device state unavailable: %s", e)
            state = DeviceState()
        key = self.keys.worker(self.worker_id)
        while True:
            heartbeat = Heartbeat(
                id=self.worker_id,
                host=self._host,
                pid=os.getpid(),
                device=state.device[:40],
                models=tuple(self.models)[:100],
                loaded=state.loaded[:100],
                slots=1,
                busy=self.busy[:64],
                budget=state.budget,
                free=state.free,
                started_at=self._started_at,
                sent_at=time.time(),
            )
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                self._check_id((await pipe.mget([key]))[0])
                pipe.multi()
                pipe.set(key, heartbeat.to_bytes(), px=max(1, int(self.settings.visibility_timeout * 1000)))
                pipe.sadd(self.keys.workers, self.worker_id)
                try:
                    await pipe.execute()
                except WatchError:
                    continue  # the key changed since it was read: read it again
            self._beaten = True
            return heartbeat

    def _check_id(self, raw: Any) -> None:
        """Raise WorkerIdInUse when the heartbeat key's value `raw` is another worker's heartbeat (not this source's:
        another host, process or start) that is alive. Before our first beat, the key of a process of this host that
        is gone is ours to take over; after it, any other heartbeat there means another worker took the id
        meanwhile."""
        if raw is None:
            return
        try:
            other = Heartbeat.from_bytes(raw)
        except ProtocolError:
            return  # not a heartbeat we can read: nobody the bot would hand jobs to; overwritten
        if (other.host, other.pid, other.started_at) == (self._host, os.getpid(), self._started_at):
            return
        predecessor = other.host == self._host and other.pid != os.getpid() and not _process_alive(other.pid)
        if predecessor and not self._beaten:
            log.info("worker %s: taking the id over from process %d of this host, gone", self.worker_id, other.pid)
            return
        age = max(0.0, time.time() - other.sent_at)
        raise WorkerIdInUse(
            f"the worker id {self.worker_id!r} is in use by a live worker (host {other.host or '?'}, pid {other.pid}, "
            f"last heartbeat {age:.0f} s ago): stop it or give this worker another --id (a worker that is gone "
            f"frees its id within {self.settings.visibility_timeout:g} s)"
        )

    async def _heartbeat(self) -> None:
        failing = False
        # Not `while True`: redis-py (on Python 3.11) can swallow a cancellation that arrives while a transaction's
        # connection is released, and the loop would then beat on after stop().
        while not self._stopped:
            self._beat_now.clear()
            try:
                await self.beat()
                if failing:
                    log.info("worker %s: Redis answers again", self.worker_id)
                failing = False
            except WorkerIdInUse as e:
                log.error("worker %s: %s; stopping", self.worker_id, e)
                self.id_taken_by = str(e)
                self.id_taken.set()
                return
            except UNREACHABLE as e:
                if not failing:
                    log.warning(
                        "worker %s: Redis cannot be reached (%s: %s); trying again", self.worker_id,
                        type(e).__name__, e,
                    )
                failing = True
            except Exception:
                log.exception("worker %s: the heartbeat failed", self.worker_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.settings.heartbeat)

    # -- control channel -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe to this worker's control channel, and subscribe again after Redis comes back (then the cancel
        keys of the jobs held here are read: a cancel published meanwhile was lost)."""
        failures = 0
        channel = self.keys.control(self.worker_id)
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                if failures:
                    log.info("worker %s: control channel subscribed again", self.worker_id)
                    await self._check_cancel_keys()
                failures = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_control(message.get("data"))
            except UNREACHABLE as e:
                failures += 1
                if failures == 1:
                    log.warning("worker %s: control channel lost (%s); subscribing again", self.worker_id, e)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(min(LISTEN_RETRY_MAX, 0.1 * 2**min(failures, 8)))

    async def _check_cancel_keys(self) -> None:
        for job in list(self._jobs.values()):
            if await self.client.exists(self.keys.cancel(job.message.job_id, job.message.token)):
                self._cancel(job)

    def _on_control(self, raw: object) -> None:
        try:
            if not isinstance(raw, bytes):
                raise ProtocolError("ControlMessage: not bytes")
            message = ControlMessage.from_bytes(raw)
        except ProtocolError as e:
            log.error("worker %s: a control message was dropped: %s", self.worker_id, e)
            return
        key = (message.job_id, message.token)
        self._cancels[key] = None
        while len(self._cancels) > REMEMBERED_CANCELS:
            self._cancels.popitem(last=False)
        job = self._jobs.get(message.job_id)
        if job is None or job.message.token != message.token:
            log.info("job %s: cancel received; not running here (remembered if it comes)", message.job_id)
            return
        self._cancel(job)

    def _cancel(self, job: _Job) -> None:
        job_id = job.message.job_id
        if self.cancel_job is not None and self.cancel_job(job_id):
            log.info("job %s: cancelling", job_id)
        else:
            log.info("job %s: cancel received after its last step (its result is on the way)", job_id)
