"""The worker side of the pool, driven by a simulated bot over a real redis-server: a worker process's GpuWorker
(tiny-sdxl) reads its inbox, sends PNG bytes, progress and heartbeats, obeys cancels, dead-letters what does not
validate, and loses nothing when Redis restarts or the worker itself does."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as redis
from PIL import Image

from bot.config import Config, WorkersSettings, parse_config
from bot.core.pool.protocol import WORKER_GROUP, Heartbeat, JobMessage, Keys
from bot.core.pool.source import RedisJobSource, WorkerIdInUse
from bot.core.pool.worker_process import WorkerSetupError, run_worker
from inference.cache import ModelCache
from inference.specs import RuntimeOptions
from tests.bot.core.pool.fake_bot import FakeBot, eventually, params
from tests.fakes.redis_server import RedisServer

VISIBILITY = 3.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    """One model cache for the module's workers: tiny-sdxl is built once."""
    return ModelCache(RuntimeOptions("cpu", None, tmp_path_factory.mktemp("models")), capacity=1, location="cpu")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    await connection.aclose()


@pytest.fixture
def bot(client: redis.Redis) -> FakeBot:
    return FakeBot(client)


@dataclass
class Worker:
    id: str
    stop: asyncio.Event
    task: asyncio.Task[None]
    spool: Path

    async def close(self) -> None:
        self.stop.set()
        done, _ = await asyncio.wait({self.task}, timeout=60)  # a hang detector, not a speed limit
        assert done, "the worker did not stop"
        self.task.result()


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(
    redis_server: RedisServer, config: Config, cache: ModelCache, bot: FakeBot
) -> AsyncIterator[StartWorker]:
    started: list[Worker] = []

    async def start(worker_id: str = "w1", models: list[str] | None = None, **changes: Any) -> Worker:
        settings = WorkersSettings(
            mode="redis", url=redis_server.url, visibility_timeout=VISIBILITY, heartbeat_interval=0.2, **changes
        )
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_worker(config, device=None, models=models, worker_id=worker_id, stop=stop, settings=settings,
                       cache=cache)
        )
        worker = Worker(worker_id, stop, task, config.data_dir / "worker-spool" / worker_id)
        started.append(worker)

        async def announced() -> bool:
            if task.done():
                task.result()  # raises what stopped it
            return await bot.heartbeat(worker_id) is not None

        await eventually(announced, f"worker {worker_id}'s heartbeat")
        return worker

    yield start
    for worker in started:
        if not worker.task.done():
            await worker.close()


def png_parameters(png: bytes) -> tuple[Image.Image, str]:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image, str(image.info.get("parameters", ""))


async def test_a_job_comes_back_as_pngs_with_its_seeds_progress_and_events(
    start_worker: StartWorker, bot: FakeBot
) -> None:
    worker = await start_worker()
    job = await bot.dispatch("w1", 1, params(steps=3, seeds=(7, 8)))
    result, pngs = await bot.result(1)
    assert (result.outcome, result.job_id, result.token, result.worker) == ("done", 1, job.token, "w1")
    assert [image.seed for image in result.images] == [7, 8]
    for meta, png in zip(result.images, pngs, strict=True):
        image, text = png_parameters(png)
        assert image.size == (64, 64) == (meta.width, meta.height)
        assert f"Seed: {meta.seed}" in text and text == meta.parameters
        assert "Steps: 3" in text and "1girl, solo" in text
    events = await bot.events(1)
    assert events[0].kind == "started" and events[0].token == job.token
    progress = [e for e in events if e.kind == "progress"]
    assert progress and progress[-1].step == progress[-1].total == 3
    assert all(e.token == job.token and e.worker == "w1" for e in events)
    assert any(e.kind == "loading" and e.model == "tiny-sdxl" for e in await bot.events())
    # Acknowledged only now, and the spooled files are gone.
    await eventually(lambda: _no_pending(bot, "w1"), "the inbox entry's acknowledgement")
    assert list(worker.spool.glob("*.png")) == []

    async def holds_model() -> bool:
        heartbeat = await bot.heartbeat("w1")
        return heartbeat is not None and heartbeat.loaded == ("tiny-sdxl",) and heartbeat.busy == ()

    await eventually(holds_model, "a heartbeat that says tiny-sdxl is loaded and nothing runs")


async def _no_pending(bot: FakeBot, worker: str) -> bool:
    return await bot.pending(worker) == []


async def test_the_heartbeat_announces_the_worker_and_a_clean_stop_deletes_it(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    worker = await start_worker("host-a:cpu", models=["tiny-sdxl"])
    heartbeat = await bot.heartbeat("host-a:cpu")
    assert heartbeat is not None
    assert heartbeat.id == "host-a:cpu" and heartbeat.models == ("tiny-sdxl",) and heartbeat.slots == 1
    assert heartbeat.device == "cpu" and heartbeat.budget is None and heartbeat.free is None
    assert heartbeat.pid > 0 and heartbeat.host
    ttl = await client.pttl(Keys().worker("host-a:cpu"))
    assert 0 < ttl <= VISIBILITY * 1000
    assert await client.sismember(Keys().workers, "host-a:cpu")
    # While a job runs, the heartbeat names it.
    job = await bot.dispatch("host-a:cpu", 5, params(steps=400))

    async def busy() -> bool:
        beat = await bot.heartbeat("host-a:cpu")
        return beat is not None and beat.busy == (5,)

    await eventually(busy, "a heartbeat naming the running job")
    await worker.close()
    assert await client.exists(Keys().worker("host-a:cpu")) == 0
    assert await client.sismember(Keys().workers, "host-a:cpu")  # the bot still knows where its inbox is
    # The interrupted job was not reported: its entry stays pending for the bot to hand out again.
    assert [p["message_id"] for p in await bot.pending("host-a:cpu")] == [await _entry_id(bot, "host-a:cpu", job)]
    assert await bot.all_results() == []


async def _entry_id(bot: FakeBot, worker: str, job: JobMessage) -> bytes:
    for entry_id, fields in await bot.client.xrange(Keys().inbox(worker)):
        if JobMessage.from_fields(fields).token == job.token:
            return bytes(entry_id)
    raise AssertionError("no such entry")


async def test_a_heartbeat_not_renewed_expires_after_the_visibility_timeout(
    redis_server: RedisServer, client: redis.Redis, bot: FakeBot, tmp_path: Path
) -> None:
    settings = WorkersSettings(mode="redis", url=redis_server.url, visibility_timeout=0.5, heartbeat_interval=0.1)
    source = RedisJobSource(client, settings, "frozen", {}, tmp_path / "spool")
    await source.beat()  # once, as a worker that froze (or was killed) right after
    assert await bot.heartbeat("frozen") is not None
    assert 0 < await client.pttl(Keys().worker("frozen")) <= 500

    async def gone() -> bool:
        return await bot.heartbeat("frozen") is None

    await eventually(gone, "the heartbeat's expiry")
    # A live worker renews it: it outlives several timeouts.
    await source.start()
    try:
        for _ in range(15):
            await asyncio.sleep(0.1)
            assert await bot.heartbeat("frozen") is not None
    finally:
        await source.stop()
    assert await bot.heartbeat("frozen") is None


async def test_a_cancel_on_the_control_channel_stops_the_running_job(start_worker: StartWorker, bot: FakeBot) -> None:
    await start_worker()
    job = await bot.dispatch("w1", 1, params(steps=500, seeds=(1, 2, 3, 4)))

    async def running() -> bool:
        return any(e.kind == "progress" for e in await bot.events(1))

    await eventually(running, "the job's first step")
    await bot.cancel("w1", job, key=False)  # published only: the worker gets it on its channel
    result, pngs = await bot.result(1)
    assert (result.outcome, pngs, result.token) == ("cancelled", [], job.token)
    assert max(e.step for e in await bot.events(1) if e.kind == "progress") < 500
    # The worker goes on with the next job.
    await bot.dispatch("w1", 2)
    assert (await bot.result(2))[0].outcome == "done"
    await eventually(lambda: _no_pending(bot, "w1"), "both entries acknowledged")


async def test_a_job_whose_cancel_key_is_set_is_reported_cancelled_without_running(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    await start_worker()
    job = await _dispatch_cancelled(bot, client, "w1", 1)
    result, pngs = await bot.result(1)
    assert (result.outcome, result.token, pngs) == ("cancelled", job.token, [])
    assert await bot.events(1) == []  # never started
    await bot.dispatch("w1", 2)
    assert (await bot.result(2))[0].outcome == "done"
    await eventually(lambda: _no_pending(bot, "w1"), "both entries acknowledged")


async def _dispatch_cancelled(bot: FakeBot, client: redis.Redis, worker: str, job_id: int) -> JobMessage:
    """XADD a job whose cancel key is already set (the token is made first)."""
    from bot.core.pool.protocol import WireParams, new_token

    job = JobMessage(
        job_id=job_id, attempt=1, token=new_token(), model="tiny-sdxl", params=WireParams.of(params()), sent_at=0.0
    )
    await bot.cancel(worker, job, publish=False)
    await client.xadd(Keys().inbox(worker), dict(job.fields()))  # type: ignore[arg-type]
    return job


async def test_a_malformed_entry_is_dead_lettered_and_the_worker_goes_on(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    await start_worker()
    inbox = Keys().inbox("w1")
    await client.xadd(inbox, {"job": b"{not json"})
    await client.xadd(inbox, {"something": b"else"})
    await bot.dispatch("w1", 3)
    assert (await bot.result(3))[0].outcome == "done"
    letters = await bot.dead_letters()
    assert len(letters) == 2
    assert all(letter[b"source"] == inbox.encode() for letter in letters)
    assert b"JobMessage" in letters[0][b"reason"] and b"not json" in letters[0][b"fields"]
    assert b"missing" in letters[1][b"reason"]
    await eventually(lambda: _no_pending(bot, "w1"), "every entry acknowledged")
    assert len(await bot.all_results()) == 1


async def test_a_job_of_a_model_the_worker_does_not_serve_is_reported_failed(
    start_worker: StartWorker, bot: FakeBot
) -> None:
    await start_worker(models=["tiny-sdxl"])
    await bot.dispatch("w1", 1, model="tiny-anima")
    await bot.dispatch("w1", 2, model="no-such-model")
    for job_id, model in ((1, "tiny-anima"), (2, "no-such-model")):
        result, pngs = await bot.result(job_id)
        assert result.outcome == "failed" and pngs == []
        assert result.error == f"The worker w1 does not serve the model {model}."
    assert not [e for e in await bot.events() if e.kind == "started"]
    await eventually(lambda: _no_pending(bot, "w1"), "both entries acknowledged")


async def test_a_result_over_the_size_limit_is_sent_as_a_failure(start_worker: StartWorker, bot: FakeBot) -> None:
    worker = await start_worker(max_result_mb=100 / 2**20)  # 100 bytes
    await bot.dispatch("w1", 1)
    result, pngs = await bot.result(1)
    assert result.outcome == "failed" and pngs == []
    assert result.error is not None and "too large" in result.error and "limit" in result.error
    await eventually(lambda: _no_pending(bot, "w1"), "the entry acknowledged")
    assert list(worker.spool.glob("*.png")) == []


async def test_redis_killed_while_a_job_runs_the_result_still_arrives_exactly_once(
    start_worker: StartWorker, bot: FakeBot, redis_server: RedisServer
) -> None:
    worker = await start_worker()
    await bot.dispatch("w1", 1, params(steps=60))

    async def running() -> bool:
        return any(e.kind == "progress" for e in await bot.events(1))

    await eventually(running, "the job's first step")
    redis_server.kill()

    async def images_written() -> bool:  # the job finished while Redis is down: its result waits to be sent
        return len(list(worker.spool.glob("*.png"))) == 1

    await eventually(images_written, "the images in the spool folder")
    await asyncio.sleep(1.0)  # a few failed attempts to send it
    assert not worker.task.done()
    redis_server.start()  # the same port and directory: the append-only file has the inbox and its group
    result, pngs = await bot.result(1)
    assert result.outcome == "done" and len(pngs) == 1
    await eventually(lambda: _no_pending(bot, "w1"), "the entry acknowledged")
    assert [r[0].job_id for r in await bot.all_results()] == [1]
    assert list(worker.spool.glob("*.png")) == []
    # And the worker serves again, its control channel subscribed again: a published cancel reaches it (published
    # again while the job's progress shows, as the bot does: one sent before the subscription is lost).
    job = await bot.dispatch("w1", 2, params(steps=500, seeds=(1, 2, 3, 4)))

    async def cancelled() -> bool:
        if any(e.kind == "progress" for e in await bot.events(2)):
            await bot.cancel("w1", job, key=False)
        return any(r[0].job_id == 2 for r in await bot.all_results())

    await eventually(cancelled, "job 2's result")
    assert (await bot.result(2))[0].outcome == "cancelled"


async def test_a_worker_stops_cleanly_while_redis_is_down(
    start_worker: StartWorker, bot: FakeBot, redis_server: RedisServer
) -> None:
    """Its claims fail and it pauses between retries; a stop then ends it (it does not go on reading)."""
    worker = await start_worker()
    redis_server.kill()
    await asyncio.sleep(1.5)  # a few failed reads of the inbox, each followed by a pause
    await worker.close()  # fails (times out) if the worker goes on after the stop
    redis_server.start()
    # Redis was down: the heartbeat could not be deleted; it expires after the visibility timeout.
    async def expired() -> bool:
        return await bot.heartbeat("w1") is None

    await eventually(expired, "the heartbeat's expiry")


async def test_a_worker_restarted_with_the_same_id_runs_the_entries_it_had_read_first(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    # A worker "w1" read job 1 and died (the entry is pending for consumer w1); job 2 came after.
    inbox = Keys().inbox("w1")
    await client.xgroup_create(inbox, WORKER_GROUP, id="0", mkstream=True)
    await bot.dispatch("w1", 1)
    await client.xreadgroup(WORKER_GROUP, "w1", {inbox: ">"}, count=1)
    assert len(await bot.pending("w1")) == 1
    await bot.dispatch("w1", 2)
    await start_worker("w1")
    assert (await bot.result(1))[0].outcome == "done"
    assert (await bot.result(2))[0].outcome == "done"
    started = [e.job_id for e in await bot.events() if e.kind == "started"]
    assert started == [1, 2]
    await eventually(lambda: _no_pending(bot, "w1"), "both entries acknowledged")
    assert sorted(r[0].job_id for r in await bot.all_results()) == [1, 2]


async def test_a_job_interrupted_by_a_stop_runs_again_when_the_worker_comes_back(
    start_worker: StartWorker, bot: FakeBot
) -> None:
    worker = await start_worker()
    await bot.dispatch("w1", 1, params(steps=100))

    async def running() -> bool:
        return any(e.kind == "progress" for e in await bot.events(1))

    await eventually(running, "the job's first step")
    await worker.close()
    assert await bot.heartbeat("w1") is None
    assert len(await bot.pending("w1")) == 1 and await bot.all_results() == []
    await start_worker("w1")
    result, _ = await bot.result(1)
    assert result.outcome == "done"
    await eventually(lambda: _no_pending(bot, "w1"), "the entry acknowledged")
    assert len(await bot.all_results()) == 1
    read = await bot.consume_results()
    assert [message.job_id for _entry, message in read] == [1]


async def test_an_inbox_deleted_by_the_reaper_is_read_again_from_its_first_entry(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    """The bot took this worker for dead and deleted its inbox (and the group); the worker lives on, and the bot
    hands it a job again: the XADD makes a stream without the group, whose first entry must not be skipped."""
    await start_worker()
    await bot.dispatch("w1", 1)
    assert (await bot.result(1))[0].outcome == "done"
    await client.delete(Keys().inbox("w1"))
    await bot.dispatch("w1", 2)
    assert (await bot.result(2))[0].outcome == "done"
    await eventually(lambda: _no_pending(bot, "w1"), "the entry acknowledged")


async def test_a_job_handed_out_again_while_it_runs_waits_for_that_run(
    start_worker: StartWorker, bot: FakeBot
) -> None:
    await start_worker()
    first = await bot.dispatch("w1", 1, params(steps=40))

    async def running() -> bool:
        return any(e.kind == "progress" for e in await bot.events(1))

    await eventually(running, "the job's first step")
    second = await bot.dispatch("w1", 1, attempt=2)
    await eventually(lambda: _no_pending(bot, "w1"), "both entries acknowledged")
    results = [r[0] for r in await bot.all_results()]
    assert [(r.token, r.attempt, r.outcome) for r in results] == [(first.token, 1, "done"), (second.token, 2, "done")]


# -- one id, one live worker ---------------------------------------------------------------------------------


def _heartbeat_of(worker_id: str, host: str, pid: int) -> bytes:
    return Heartbeat(id=worker_id, host=host, pid=pid, started_at=time.time() - 60, sent_at=time.time()).to_bytes()


async def test_a_worker_does_not_start_under_the_id_of_a_live_worker(
    start_worker: StartWorker, bot: FakeBot, config: Config, cache: ModelCache, redis_server: RedisServer
) -> None:
    await start_worker("gpu-box:cuda")
    first = await bot.heartbeat("gpu-box:cuda")
    assert first is not None
    settings = WorkersSettings(
        mode="redis", url=redis_server.url, visibility_timeout=VISIBILITY, heartbeat_interval=0.2
    )
    with pytest.raises(WorkerSetupError, match="'gpu-box:cuda' is in use by a live worker") as refused:
        await run_worker(
            config, device=None, models=None, worker_id="gpu-box:cuda", stop=asyncio.Event(), settings=settings,
            cache=cache,
        )
    assert f"pid {os.getpid()}" in str(refused.value) and "another --id" in str(refused.value)
    # The first worker is untouched: its heartbeat stays its own and it serves jobs.
    now = await bot.heartbeat("gpu-box:cuda")
    assert now is not None and now.started_at == first.started_at
    job = await bot.dispatch("gpu-box:cuda", 1, params(steps=2))
    result, _ = await bot.result(1)
    assert (result.outcome, result.token) == ("done", job.token)


async def test_a_worker_takes_the_id_over_from_a_process_of_this_host_that_is_gone(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_pid = int(gone.stdout)
    stale = _heartbeat_of("box:cuda:0", socket.gethostname(), dead_pid)
    await client.set(Keys().worker("box:cuda:0"), stale, px=60_000)
    worker = await start_worker("box:cuda:0")  # the old heartbeat counts as announced: wait for the new one

    async def ours() -> bool:
        assert not worker.task.done(), worker.task
        heartbeat = await bot.heartbeat("box:cuda:0")
        return heartbeat is not None and heartbeat.pid == os.getpid()

    await eventually(ours, "the heartbeat of the worker that took the id over")


async def test_a_worker_whose_id_another_worker_takes_stops_and_leaves_its_key(
    start_worker: StartWorker, bot: FakeBot, client: redis.Redis
) -> None:
    worker = await start_worker("shared-id")
    await client.set(Keys().worker("shared-id"), _heartbeat_of("shared-id", "elsewhere", 4321), px=60_000)
    done, _ = await asyncio.wait({worker.task}, timeout=60)  # a hang detector, not a speed limit
    assert done, "the worker did not stop"
    with pytest.raises(WorkerSetupError, match="in use by a live worker \\(host elsewhere, pid 4321"):
        worker.task.result()
    heartbeat = await bot.heartbeat("shared-id")
    assert heartbeat is not None and heartbeat.host == "elsewhere"  # not deleted: it is the other worker's


async def test_a_worker_freezes_its_start_up_heap_and_each_model_it_loads(
    redis_server: RedisServer, config: Config, bot: FakeBot, tmp_path: Path
) -> None:
    """The bot's garbage-collector policy (bot/core/collector.py) in the worker process: full collections do not
    walk the models' objects; the objects are collectable again once the worker stopped."""
    gc.unfreeze()
    cache = ModelCache(RuntimeOptions("cpu", None, tmp_path / "models"), capacity=1, location="cpu")  # a fresh load
    settings = WorkersSettings(
        mode="redis", url=redis_server.url, visibility_timeout=VISIBILITY, heartbeat_interval=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(config, device=None, models=None, worker_id="gc", stop=stop, settings=settings, cache=cache)
    )
    try:
        await eventually(lambda: _announced(bot, "gc"), "the worker's heartbeat")
        at_start = gc.get_freeze_count()
        assert at_start > 0
        await bot.dispatch("gc", 1, params(steps=2))
        result, _ = await bot.result(1)
        assert result.outcome == "done"
        assert gc.get_freeze_count() > at_start + 10_000  # the model's objects
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)  # a hang detector, not a speed limit
    assert gc.get_freeze_count() == 0


async def _announced(bot: FakeBot, worker: str) -> bool:
    return await bot.heartbeat(worker) is not None


async def test_a_heartbeat_written_between_the_read_and_the_write_is_not_overwritten(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's heartbeat that lands right after ours read the key (a loaded machine, two workers started
    together) is seen, not overwritten: the read, the check and the write are one transaction."""
    settings = WorkersSettings(mode="redis", url=redis_server.url, visibility_timeout=5, heartbeat_interval=0.2)
    source = RedisJobSource(client, settings, "shared-id", {}, tmp_path / "spool")
    await source.beat()
    other = _heartbeat_of("shared-id", "elsewhere", 4321)
    check = source._check_id
    landed: list[bool] = []

    def check_then_the_other_writes(raw: Any) -> None:
        check(raw)
        if not landed:  # the other worker's write, between our read and our write
            landed.append(True)
            with sync_redis.Redis.from_url(redis_server.url) as other_worker:
                other_worker.set(Keys().worker("shared-id"), other, px=60_000)

    monkeypatch.setattr(source, "_check_id", check_then_the_other_writes)
    with pytest.raises(WorkerIdInUse, match="host elsewhere, pid 4321"):
        await source.beat()
    assert await client.get(Keys().worker("shared-id")) == other  # the other worker's, not overwritten
