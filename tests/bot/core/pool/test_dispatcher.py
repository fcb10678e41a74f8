"""PoolDispatcher (bot/core/pool/dispatcher.py), the bot side of redis mode, against a real redis-server and a real
SQLite queue, with simulated workers that speak protocol.py (tests/bot/core/pool/simworker.py): dispatch and
results, exactly-once recording, credits, fair order, affinity, failover, reconciliation after a bot restart,
Redis restarted and down, no worker online, cancellation across the wire, the pre-flight plan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bot.config import parse_config
from bot.core.events import Event, EventBus, JobFinished, JobProgress, JobStarted, ModelLoading
from bot.core.jobs import GAVE_UP_WORKER, JobOrigin, JobRecord, JobState
from bot.core.pool.dispatcher import PoolDispatcher
from bot.core.pool.protocol import BOT_CONSUMER, BOT_GROUP, ControlMessage, Keys
from bot.core.queue import JobQueue
from bot.core.quotas import QuotaLimits, Quotas
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, resolve_request
from inference.types import ModelLoadError
from tests.bot.core.pool.simworker import SimWorker, tiny_png
from tests.fakes.redis_server import RedisServer

VISIBILITY = 0.6
POLL = 0.05
TIMEOUT = 30.0  # a safety net for waits, never an assertion on speed


async def until(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Pool:
    """A bot's queue and dispatcher on one SQLite file, plus the workers a test starts."""

    def __init__(self, tmp_path: Path, server: RedisServer, store: Store) -> None:
        self.tmp_path = tmp_path
        self.server = server
        self.store = store
        self.config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
        self.events = EventBus()
        self.heard: list[Event] = []
        self.events.listen(self.heard.append)
        self.queue = JobQueue(store, Quotas(store, QuotaLimits(None, None)), self.config.models, self.events,
                              self.config.data_dir)
        self.keys = Keys()
        self.dispatcher = self.new_dispatcher()
        self.workers: list[SimWorker] = []
        self.redis = Redis.from_url(server.url, socket_timeout=5)

    def new_dispatcher(self) -> PoolDispatcher:
        return PoolDispatcher(
            self.queue,
            lambda: Redis.from_url(self.server.url, socket_timeout=5, socket_connect_timeout=1),
            keys=self.keys,
            visibility_timeout=VISIBILITY,
            poll=POLL,
        )

    async def worker(self, worker_id: str, **options: Any) -> SimWorker:
        options.setdefault("visibility", VISIBILITY)
        worker = await SimWorker(self.server.url, worker_id, keys=self.keys, **options).start()
        self.workers.append(worker)
        return worker

    async def submit(self, owner: str = "alice", model: str = "tiny-sdxl", seed: int = 1, count: int = 1) -> JobRecord:
        request = GenerationRequest(model, PromptChoices("1girl"), seed=seed, steps=2, size="64x64", count=count)
        resolved = resolve_request(request, self.config.models, None)
        return await self.queue.submit(resolved, JobOrigin(owner))

    async def job(self, job_id: int) -> JobRecord:
        job = await self.queue.jobs.get(job_id)
        assert job is not None
        return job

    async def state(self, job_id: int) -> JobState:
        return (await self.job(job_id)).state

    async def settle(self, rounds: int = 5) -> None:
        """Let the scheduler run a few more rounds (a dispatch that should not happen would have by then)."""
        start = self.dispatcher.rounds
        await until(lambda: self.dispatcher.rounds >= start + rounds, "scheduler rounds")

    def finished(self, job_id: int) -> list[JobFinished]:
        return [e for e in self.heard if isinstance(e, JobFinished) and e.job_id == job_id]

    async def close(self) -> None:
        await self.dispatcher.stop()
        for worker in self.workers:
            await worker.kill()
        with contextlib.suppress(Exception):
            await self.redis.aclose()


@pytest.fixture
async def pool(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Pool]:
    store = await Store.open(tmp_path / "bot.sqlite")
    made = Pool(tmp_path, redis_server, store)
    try:
        yield made
    finally:
        await made.close()
        await made.queue.close()
        await store.close()


async def test_a_job_is_handed_to_a_worker_and_its_result_stored(pool: Pool) -> None:
    worker = await pool.worker("w1")
    await pool.dispatcher.start()
    job = await pool.submit(seed=7, count=2)
    [sent] = await worker.wait_for_jobs(1)
    assert (sent.job_id, sent.attempt, sent.model, sent.params.seeds) == (job.id, 1, "tiny-sdxl", job.params.seeds)
    assert JobStarted(job.id, "tiny-sdxl") in pool.heard
    await until(lambda: pool.dispatcher.status().running == {job.id: "w1"}, "the status shows the running job")
    status = pool.dispatcher.status()
    assert status.mode == "redis" and status.online and [w.id for w in status.workers] == ["w1"]
    assert status.workers[0].busy_job == job.id

    await worker.progress(job.id, 1, 2)
    await worker.event(kind="loading", model="tiny-sdxl", stage="unet", done=1, stages=3)
    await until(lambda: any(isinstance(e, JobProgress) for e in pool.heard), "progress")
    progress = next(e for e in pool.heard if isinstance(e, JobProgress))
    assert (progress.job_id, progress.step, progress.total, progress.eta) == (job.id, 1, 2, 0.5)
    await until(lambda: ModelLoading("tiny-sdxl", "unet", 1, 3) in pool.heard, "model loading")

    await worker.finish(job.id)
    await until(lambda: pool.finished(job.id), "the job finished")
    assert pool.finished(job.id) == [JobFinished(job.id, "done")]
    assert await pool.state(job.id) == JobState.DONE
    images = await pool.queue.jobs.images(job.id)
    paths = pool.queue.image_paths(await pool.job(job.id))
    assert [(i.index, i.seed) for i in images] == [(0, job.params.seeds[0]), (1, job.params.seeds[1])]
    assert [pool.config.data_dir / i.path for i in images] == list(paths)
    assert all(path.read_bytes() == tiny_png() for path in paths)
    await pool.dispatcher.idle()  # the result's entry acknowledged too
    assert pool.dispatcher.status().running == {} and not pool.dispatcher.busy()
    pending = await pool.redis.xpending(pool.keys.results, BOT_GROUP)
    assert pending["pending"] == 0  # acknowledged
    assert await pool.redis.xlen(pool.keys.results) == 0  # and deleted: its PNGs no longer take Redis's memory


async def test_a_second_result_and_results_of_other_dispatches_change_nothing(pool: Pool) -> None:
    """Exactly once: a duplicate of the result, a result with another token, from another worker, or of another
    attempt, is logged and acknowledged without effect."""
    worker = await pool.worker("w1")
    await pool.dispatcher.start()
    job = await pool.submit()
    [sent] = await worker.wait_for_jobs(1)
    forged = [
        worker.result(sent, token="f" * 32),
        worker.result(sent, worker="intruder"),
        worker.result(sent, attempt=2),
    ]
    for entry in forged:
        await worker.send(entry)
    await until(lambda: pool.redis.xpending(pool.keys.results, BOT_GROUP), "the results stream")

    async def all_read() -> bool:
        groups = await pool.redis.xinfo_groups(pool.keys.results)
        return bool(groups[0]["entries-read"] == 3 and groups[0]["pending"] == 0)

    await until(all_read, "the forged results read and acknowledged")
    assert await pool.state(job.id) == JobState.RUNNING and pool.finished(job.id) == []

    await worker.finish(job.id, "failed")
    await until(lambda: pool.finished(job.id), "the job finished")
    await worker.send(worker.result(sent, "done"))  # the same dispatch again, now with images
    await until(all_read_n(pool, 5), "the duplicate read")
    assert pool.finished(job.id) == [JobFinished(job.id, "failed", "out of memory")]
    recorded = await pool.job(job.id)
    assert recorded.state == JobState.FAILED and recorded.error == "out of memory"
    assert await pool.queue.jobs.images(job.id) == []


def finished_check(pool: Pool, job_id: int) -> Callable[[], Any]:
    return lambda: pool.finished(job_id)


async def xadd(pool: Pool, stream: str, fields: dict[str, bytes]) -> None:
    await pool.redis.xadd(stream, dict(fields))  # type: ignore[arg-type]


def all_read_n(pool: Pool, count: int) -> Callable[[], Any]:
    async def check() -> bool:
        groups = await pool.redis.xinfo_groups(pool.keys.results)
        return bool(groups[0]["entries-read"] == count and groups[0]["pending"] == 0)

    return check


async def test_malformed_results_and_events_are_dead_lettered_and_the_bot_goes_on(pool: Pool) -> None:
    worker = await pool.worker("w1")
    await pool.dispatcher.start()
    job = await pool.submit()
    [sent] = await worker.wait_for_jobs(1)
    good = worker.result(sent)
    await pool.redis.xadd(pool.keys.results, {"result": b"{not json"})
    await xadd(pool, pool.keys.results, {**good, "png:0": b"GIF89a not a png"})
    await pool.redis.xadd(pool.keys.events, {"event": b'{"kind": "explode"}'})
    await until(lambda: pool.redis.xlen(pool.keys.dead), "a dead letter")
    await until(all_read_n(pool, 2), "both malformed results read")
    await until(lambda: _length_is(pool, pool.keys.dead, 3), "three dead letters")
    dead: Any = await pool.redis.xrange(pool.keys.dead)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    sources = [fields[b"source"].decode() for _, fields in dead]
    assert sorted(sources) == sorted([pool.keys.results, pool.keys.results, pool.keys.events])
    assert any("not a PNG" in reason for reason in reasons)
    assert await pool.state(job.id) == JobState.RUNNING
    await worker.finish(job.id)  # the dispatcher still works
    await until(lambda: pool.finished(job.id), "the job finished")
    assert await pool.state(job.id) == JobState.DONE


async def _length_is(pool: Pool, stream: str, count: int) -> bool:
    return int(await pool.redis.xlen(stream)) == count


async def test_credits_one_users_burst_never_fills_the_inboxes(pool: Pool) -> None:
    """Two workers of one slot: a user's six jobs put one job in each inbox, the others wait in the fair queue; a
    second user's job submitted later runs next, before the first user's remaining four."""
    w1 = await pool.worker("w1")
    w2 = await pool.worker("w2")
    await pool.dispatcher.start()
    burst = [await pool.submit("alice", seed=i) for i in range(6)]
    await w1.wait_for_jobs(1)
    await w2.wait_for_jobs(1)
    await pool.settle()
    assert len(w1.received) == len(w2.received) == 1
    assert await pool.redis.xlen(pool.keys.inbox("w1")) == 1 and await pool.redis.xlen(pool.keys.inbox("w2")) == 1
    assert await pool.queue.waiting() == 4
    bob = await pool.submit("bob", seed=99)
    await pool.settle()
    assert len(w1.received) + len(w2.received) == 2  # no slot is free
    first = w1.received[0].job_id
    await w1.finish(first)
    [_, second] = await w1.wait_for_jobs(2)
    assert second.job_id == bob.id
    order = [w.job_id for w in w1.received + w2.received]
    assert set(order) <= {j.id for j in burst} | {bob.id}
    assert w1.most_open == 1 and w2.most_open == 1


async def test_a_slot_is_busy_until_its_result_is_recorded(pool: Pool) -> None:
    """A worker with two slots gets two jobs, a third only once a result is recorded."""
    worker = await pool.worker("w1", slots=2)
    await pool.dispatcher.start()
    jobs = [await pool.submit("alice", seed=i) for i in range(3)]
    await worker.wait_for_jobs(2)
    await pool.settle()
    assert len(worker.received) == 2
    await worker.finish(jobs[0].id)
    await worker.wait_for_jobs(3)
    assert worker.most_open == 2


async def test_fair_order_among_the_models_idle_workers_serve(pool: Pool) -> None:
    """A job no idle worker serves waits; the next job in fair order that one serves runs."""
    anima_only = await pool.worker("w-anima", models=("tiny-anima",))
    await pool.dispatcher.start()
    sdxl = await pool.submit("alice", "tiny-sdxl")
    anima_first = await pool.submit("bob", "tiny-anima", seed=1)
    anima_second = await pool.submit("bob", "tiny-anima", seed=2)
    [sent] = await anima_only.wait_for_jobs(1)
    assert sent.job_id == anima_first.id
    await anima_only.finish(sent.job_id)
    [_, sent2] = await anima_only.wait_for_jobs(2)
    assert sent2.job_id == anima_second.id
    assert await pool.state(sdxl.id) == JobState.QUEUED
    sdxl_worker = await pool.worker("w-sdxl", models=("tiny-sdxl",))
    [sent3] = await sdxl_worker.wait_for_jobs(1)
    assert sent3.job_id == sdxl.id


async def test_affinity_prefers_the_worker_holding_the_model_then_an_empty_one(pool: Pool) -> None:
    holds_anima = await pool.worker("a-anima", loaded=("tiny-anima",))
    empty = await pool.worker("b-empty")
    holds_sdxl = await pool.worker("c-sdxl", loaded=("tiny-sdxl",))
    await pool.dispatcher.start()
    await until(lambda: len(pool.dispatcher.status().workers) == 3, "three workers seen")
    first = await pool.submit("u1", "tiny-sdxl")
    [sent] = await holds_sdxl.wait_for_jobs(1)
    assert sent.job_id == first.id
    second = await pool.submit("u2", "tiny-sdxl")
    [sent] = await empty.wait_for_jobs(1)
    assert sent.job_id == second.id
    third = await pool.submit("u3", "tiny-sdxl")
    [sent] = await holds_anima.wait_for_jobs(1)
    assert sent.job_id == third.id


async def test_a_dead_workers_job_goes_to_another_worker_and_finishes_once(pool: Pool) -> None:
    doomed = await pool.worker("doomed")
    await pool.dispatcher.start()
    job = await pool.submit()
    [first] = await doomed.wait_for_jobs(1)
    await doomed.kill()  # SIGKILL: no result, the entry stays pending, the heartbeat expires
    survivor = await pool.worker("survivor")
    [second] = await survivor.wait_for_jobs(1)
    assert second.job_id == job.id and second.attempt == 2 and second.token != first.token
    assert await pool.redis.exists(pool.keys.inbox("doomed")) == 0  # reaped
    await survivor.finish(job.id)
    await until(lambda: pool.finished(job.id), "the job finished")
    late = SimWorker(pool.server.url, "doomed", keys=pool.keys)  # the dead worker's result, late
    await late.send(late.result(first))
    await until(all_read_n(pool, 2), "the late result read")
    assert pool.finished(job.id) == [JobFinished(job.id, "done")]
    assert (await pool.job(job.id)).attempts == 2
    assert len(await pool.queue.jobs.images(job.id)) == 1
    await late.client.aclose()


async def test_a_job_that_kills_every_worker_is_given_up(pool: Pool) -> None:
    await pool.dispatcher.start()
    job = await pool.submit()
    for attempt in range(1, 4):
        worker = await pool.worker(f"victim-{attempt}")
        [sent] = await worker.wait_for_jobs(1)
        assert sent.attempt == attempt
        await worker.kill()
    await until(lambda: pool.finished(job.id), "the job given up")
    assert pool.finished(job.id) == [JobFinished(job.id, "failed", GAVE_UP_WORKER)]
    assert (await pool.job(job.id)).error == GAVE_UP_WORKER


async def test_a_cleanly_stopped_workers_job_goes_back_at_once(pool: Pool) -> None:
    leaving = await pool.worker("leaving", visibility=60.0)  # its key would live a minute
    await pool.dispatcher.start()
    job = await pool.submit()
    await leaving.wait_for_jobs(1)
    await leaving.stop()  # deletes its heartbeat key
    successor = await pool.worker("successor", auto=True)
    await until(lambda: pool.finished(job.id), "the job finished elsewhere")
    assert successor.received[0].job_id == job.id


async def test_bot_restart_reconciles(pool: Pool) -> None:
    """Killed and restarted, the bot first records the results sent meanwhile (also one it had read, not recorded,
    from a worker that died since: that job is done, not run again), keeps the jobs whose worker is alive running
    where they are, and requeues those whose worker died and those a local-mode worker had claimed."""
    w1 = await pool.worker("w1")
    w2 = await pool.worker("w2")
    w3 = await pool.worker("w3")
    await pool.dispatcher.start()
    for i in range(3):
        await pool.submit(f"user{i}", seed=i)
    for worker in (w1, w2, w3):
        await worker.wait_for_jobs(1)
    done, requeued, kept = (w.received[0].job_id for w in (w1, w2, w3))
    await pool.dispatcher.stop()  # the bot dies: nothing is cleaned up
    local = await pool.submit("user9", seed=9)
    assert (claimed := await pool.queue.claim("oldhost:123")) is not None and claimed.id == local.id

    await w1.finish(done)  # while the bot is away; the bot had read it and died before recording it: pending
    await pool.redis.xreadgroup(BOT_GROUP, BOT_CONSUMER, {pool.keys.results: ">"})
    await w1.kill()  # and then w1 died too
    await w2.kill()  # w2 died with its job
    await until(lambda: _gone(pool, "w1", "w2"), "the dead workers' heartbeats expired")
    token_kept = (await pool.queue.jobs.dispatch(kept) or pytest.fail("kept is not running")).token

    pool.dispatcher = pool.new_dispatcher()
    await pool.dispatcher.start()
    w4 = await pool.worker("w4")
    await until(lambda: pool.finished(done), "the pending result recorded")
    assert pool.finished(done) == [JobFinished(done, "done")]
    first = (await w4.wait_for_jobs(1))[0]
    await w4.finish(first.job_id)
    second = (await w4.wait_for_jobs(2))[1]
    await w4.finish(second.job_id)
    assert {first.job_id, second.job_id} == {requeued, local.id} and first.attempt == second.attempt == 2
    dispatch = await pool.queue.jobs.dispatch(kept)
    assert dispatch is not None and dispatch.worker == "w3" and dispatch.token == token_kept
    await w3.finish(kept)
    for job_id in (requeued, local.id, kept):
        await until(finished_check(pool, job_id), f"job {job_id} finished")
    ran = [m.job_id for w in (w1, w2, w3, w4) for m in w.received]
    assert ran.count(done) == 1 and ran.count(kept) == 1  # nothing that finished or kept running ran twice
    assert (await pool.job(done)).attempts == 1
    assert all(pool.finished(job_id) == [JobFinished(job_id, "done")] for job_id in (done, requeued, kept, local.id))


async def _gone(pool: Pool, *worker_ids: str) -> bool:
    return int(await pool.redis.exists(*(pool.keys.worker(w) for w in worker_ids))) == 0


async def test_redis_restarted_with_jobs_in_flight_loses_nothing(pool: Pool) -> None:
    worker = await pool.worker("w1")
    await pool.dispatcher.start()
    job = await pool.submit()
    waiting = await pool.submit("bob")
    await worker.wait_for_jobs(1)
    await asyncio.to_thread(pool.server.restart)  # AOF: the inbox, its pending entry and the results survive
    await pool.redis.aclose()
    pool.redis = Redis.from_url(pool.server.url, socket_timeout=5)
    await worker.finish(job.id)
    await until(lambda: pool.finished(job.id), "the job recorded after the restart")
    [_, second] = await worker.wait_for_jobs(2)
    assert second.job_id == waiting.id
    await worker.finish(waiting.id)
    await until(lambda: pool.finished(waiting.id), "the second job recorded")
    assert pool.finished(job.id) == [JobFinished(job.id, "done")]
    assert pool.dispatcher.reconnections >= 1


async def test_redis_down_jobs_are_stored_and_dispatched_when_it_returns(pool: Pool) -> None:
    worker = await pool.worker("w1", auto=True)
    await pool.dispatcher.start()
    await until(lambda: pool.dispatcher.status().online, "online")
    await asyncio.to_thread(pool.server.kill)
    await until(lambda: not pool.dispatcher.status().online, "the status says Redis is unreachable")
    jobs = [await pool.submit(f"user{i}", seed=i) for i in range(3)]  # accepted and stored
    assert await pool.queue.waiting() == 3
    await asyncio.to_thread(pool.server.start)
    await pool.redis.aclose()
    pool.redis = Redis.from_url(pool.server.url, socket_timeout=5)
    for job in jobs:
        await until(finished_check(pool, job.id), f"job {job.id} finished")
    assert pool.dispatcher.status().online
    assert sorted(m.job_id for m in worker.received) == [j.id for j in jobs]


async def test_no_worker_online_jobs_wait_and_the_status_says_so(pool: Pool) -> None:
    await pool.dispatcher.start()
    spec = pool.config.models["tiny-sdxl"]
    assert pool.dispatcher.plan(spec, 64, 64, 1) is not None  # accepted: it waits for a worker
    job = await pool.submit()
    await until(lambda: pool.dispatcher.status().online, "online")
    await pool.settle()
    status = pool.dispatcher.status()
    assert status.workers == () and status.running == {}
    assert await pool.state(job.id) == JobState.QUEUED
    await pool.dispatcher.switch_model(spec)  # nothing to load, nobody to refuse it
    worker = await pool.worker("late", auto=True)
    await until(lambda: pool.finished(job.id), "the job ran once a worker came")
    assert worker.received[0].job_id == job.id


async def test_cancel_travels_to_the_worker_and_is_sent_again_on_progress(pool: Pool) -> None:
    worker = await pool.worker("w1")
    await pool.dispatcher.start()
    job = await pool.submit()
    [sent] = await worker.wait_for_jobs(1)
    await asyncio.sleep(0.1)  # let the worker's subscription settle (pub/sub is fire-and-forget)
    cancelling = await pool.queue.cancel(job.id, "alice")
    assert cancelling.state == JobState.RUNNING
    await pool.dispatcher.cancel(job.id)
    assert await pool.redis.get(pool.keys.cancel(job.id, sent.token)) == b"1"
    await until(lambda: worker.controls, "the cancel heard")
    assert worker.controls[0] == ControlMessage(job_id=job.id, token=sent.token)
    await worker.progress(job.id, 1, 2)  # it runs on as if it had missed it
    await until(lambda: len(worker.controls) >= 2, "the cancel sent again")
    await worker.finish(job.id, "cancelled")
    await until(lambda: pool.finished(job.id), "the job cancelled")
    recorded = await pool.job(job.id)
    assert recorded.state == JobState.CANCELLED and recorded.cancelled_by == "alice"


async def test_plan_and_switch_model_follow_the_live_workers(pool: Pool) -> None:
    spec = pool.config.models["tiny-sdxl"]
    small = await pool.worker("small", budget=512 * 1024**2, models=("tiny-sdxl",), loaded=("tiny-sdxl",))
    await pool.dispatcher.start()
    await until(lambda: pool.dispatcher.status().workers, "the worker seen")
    assert pool.dispatcher.plan(spec, 64, 64, 1) is not None
    assert pool.dispatcher.plan(spec, 4096, 4096, 4) is None
    assert "and 0.5 GiB is usable" in pool.dispatcher.refusal(spec, 4096, 4096, 4)
    assert pool.dispatcher.memory_status(spec).usable == 512 * 1024**2
    await pool.dispatcher.switch_model(spec)  # held by a worker: nothing to do
    with pytest.raises(ModelLoadError):
        await pool.dispatcher.switch_model(pool.config.models["tiny-anima"])  # no live worker serves it
    await pool.worker("big", budget=None)  # unknown budget (the CPU): anything fits
    await until(lambda: len(pool.dispatcher.status().workers) == 2, "both workers seen")
    assert pool.dispatcher.plan(spec, 4096, 4096, 4) is not None
    await small.stop()


async def test_a_cancel_asked_while_redis_is_down_is_sent_when_it_returns(pool: Pool) -> None:
    worker = await pool.worker("w1")
    await pool.dispatcher.start()
    job = await pool.submit()
    [sent] = await worker.wait_for_jobs(1)
    await asyncio.to_thread(pool.server.kill)
    await until(lambda: not pool.dispatcher.status().online, "offline")
    await pool.queue.cancel(job.id, "alice")
    await pool.dispatcher.cancel(job.id)  # does not raise
    await asyncio.to_thread(pool.server.start)
    await pool.redis.aclose()
    pool.redis = Redis.from_url(pool.server.url, socket_timeout=5)
    await until(lambda: pool.redis.exists(pool.keys.cancel(job.id, sent.token)), "the cancel key set")
    await worker.finish(job.id, "cancelled")
    await until(lambda: pool.finished(job.id), "the job cancelled")
    assert (await pool.job(job.id)).state == JobState.CANCELLED


async def test_a_job_claimed_but_never_sent_before_the_bot_died_is_sent_after_the_restart(pool: Pool) -> None:
    """The bot died between the claim (SQLite) and the XADD: the worker is alive but never got the job. The restarted
    bot finds no entry for that dispatch in the worker's inbox and hands the job out again, its attempt not counted."""
    worker = await pool.worker("w1")
    job = await pool.submit()
    claimed = await pool.queue.claim("w1", models=("tiny-sdxl",), token="c" * 32)
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
    await pool.dispatcher.start()
    [sent] = await worker.wait_for_jobs(1)
    assert sent.job_id == job.id and sent.attempt == 1 and sent.token != "c" * 32
    await worker.finish(job.id)
    await until(lambda: pool.finished(job.id), "the job finished")
    assert (await pool.job(job.id)).state == JobState.DONE
