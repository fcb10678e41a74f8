"""The worker pool's own cost (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_pool.py [--jobs 1000] [--sleep 0.01] [--visibility 2]

A real redis-server (tests/fakes/redis_server.py, AOF with appendfsync always, as the tests run it) on a temporary
directory; the bot side is the real queue (SQLite) and PoolDispatcher; the workers are separate processes of this
script (`--worker ID`) that speak bot/core/pool/protocol.py and only sleep, so every figure is the pool's own cost:

  idle pool    one job at a time on one idle worker: submit → the worker reads it, and submit → the result is
               recorded in SQLite (PNG written) minus the sleep.
  1,000 queued the gap a worker slot stays idle between two jobs while 1,000 wait (its result sent → the bot reads
               and records it, frees the slot, claims the next job in fair order, XADDs it → the worker reads it);
               p50/p99 with 3 workers. Target: p99 under 20 ms.
  throughput   jobs per second with 1, 2 and 3 workers (each job sleeps --sleep seconds).
  failover     a worker SIGKILLed mid-job: kill → another worker reads the job (target: visibility + under 1 s).

Figures depend on the machine and on what else it runs (the load average is printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import ms, percentile  # noqa: E402  (benchmarks/measure.py)

from bot.core.pool.protocol import (  # noqa: E402
    WORKER_GROUP,
    Heartbeat,
    ImageMeta,
    JobMessage,
    Keys,
    ResultMessage,
)

# -- the worker process -----------------------------------------------------------------------------------------


def tiny_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


async def run_worker(url: str, worker_id: str, sleep: float, visibility: float) -> None:
    """A worker that only sleeps: heartbeat, inbox, result, ack. Prints `job read_at sent_at` per job."""
    from redis.asyncio import Redis
    from redis.exceptions import ResponseError

    keys = Keys()
    client = Redis.from_url(url, socket_timeout=10)
    inbox = keys.inbox(worker_id)
    with contextlib.suppress(ResponseError):
        await client.xgroup_create(inbox, WORKER_GROUP, id="0", mkstream=True)
    png = tiny_png()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def beat() -> None:
        while True:
            heartbeat = Heartbeat(id=worker_id, device="cpu", models=("tiny-sdxl",), pid=os.getpid())
            await client.set(keys.worker(worker_id), heartbeat.to_bytes(), px=int(visibility * 1000))
            await client.sadd(keys.workers, worker_id)
            await asyncio.sleep(visibility / 4)

    beating = asyncio.create_task(beat())
    while not stop.is_set():
        reply: Any = await client.xreadgroup(WORKER_GROUP, worker_id, {inbox: ">"}, count=1, block=200)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                read_at = time.time()
                job = JobMessage.from_fields(fields)
                await asyncio.sleep(sleep)
                images = tuple(
                    ImageMeta(index=i, seed=seed, width=8, height=8, parameters="")
                    for i, seed in enumerate(job.params.seeds)
                )
                result = ResultMessage(
                    job_id=job.job_id, attempt=job.attempt, token=job.token, worker=worker_id, outcome="done",
                    images=images, run_seconds=sleep,
                )
                sent_at = time.time()
                await client.xadd(keys.results, result.fields([png] * len(images)))  # type: ignore[arg-type]
                await client.xack(inbox, WORKER_GROUP, entry_id)
                print(job.job_id, read_at, sent_at, flush=True)
    beating.cancel()
    await client.delete(keys.worker(worker_id))
    await client.aclose()


# -- the bot side -----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, directory: Path, url: str, sleep: float, visibility: float) -> None:
        self.directory = directory
        self.url = url
        self.sleep = sleep
        self.visibility = visibility
        self.workers: dict[str, subprocess.Popen[str]] = {}
        self.recorded: dict[int, float] = {}  # job id -> when its result was recorded (time.time())
        self.count = 0

    async def open(self) -> None:
        from redis.asyncio import Redis

        from bot.config import parse_config
        from bot.core.events import EventBus, JobFinished
        from bot.core.pool.dispatcher import PoolDispatcher
        from bot.core.queue import JobQueue
        from bot.core.quotas import QuotaLimits, Quotas
        from bot.core.store import Store

        self.config = parse_config({"data_dir": str(self.directory / "data")}, self.directory)
        self.store = await Store.open(self.directory / f"bot-{self.count}.sqlite")
        self.count += 1
        events = EventBus()
        self.recorded = {}

        def heard(event: object) -> None:
            if isinstance(event, JobFinished):
                self.recorded[event.job_id] = time.time()

        events.listen(heard)
        quotas = Quotas(self.store, QuotaLimits(None, None))
        self.queue = JobQueue(self.store, quotas, self.config.models, events, self.config.data_dir)
        self.dispatcher = PoolDispatcher(
            self.queue, lambda: Redis.from_url(self.url, socket_timeout=10), visibility_timeout=self.visibility
        )
        await self.dispatcher.start()

    async def close(self) -> None:
        await self.dispatcher.stop()
        await self.queue.close()
        await self.store.close()

    def start_worker(self, worker_id: str) -> None:
        self.workers[worker_id] = subprocess.Popen(
            [sys.executable, __file__, "--worker", worker_id, "--url", self.url, "--sleep", str(self.sleep),
             "--visibility", str(self.visibility)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    async def wait_workers_seen(self, count: int) -> None:
        while len(self.dispatcher.status().workers) < count:
            await asyncio.sleep(0.02)

    def stop_workers(self) -> dict[int, tuple[str, float, float]]:
        """Stop every worker (SIGTERM); job id -> (worker, read_at, sent_at) from their output."""
        found: dict[int, tuple[str, float, float]] = {}
        for worker_id, process in self.workers.items():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=30)
            for line in out.splitlines():
                job_id, read_at, sent_at = line.split()
                found[int(job_id)] = (worker_id, float(read_at), float(sent_at))
        self.workers = {}
        return found

    async def submit(self, owner: str, seed: int) -> int:
        from bot.core.jobs import JobOrigin
        from bot.prompts.builder import PromptChoices
        from bot.prompts.requests import GenerationRequest, resolve_request

        request = GenerationRequest("tiny-sdxl", PromptChoices("1girl"), seed=seed, steps=1, size="64x64")
        job = await self.queue.submit(resolve_request(request, self.config.models, None), JobOrigin(owner))
        return job.id

    async def wait_recorded(self, job_ids: list[int]) -> None:
        while any(job_id not in self.recorded for job_id in job_ids):
            await asyncio.sleep(0.005)


async def idle_pool(bench: Bench, samples: int) -> None:
    await bench.open()
    bench.start_worker("idle-1")
    await bench.wait_workers_seen(1)
    submitted: dict[int, float] = {}
    for i in range(samples):
        at = time.time()
        job_id = await bench.submit(f"user{i % 7}", i)
        submitted[job_id] = at
        await bench.wait_recorded([job_id])
    seen = bench.stop_workers()
    await bench.close()
    to_start = [seen[j][1] - at for j, at in submitted.items()]
    to_record = [bench.recorded[j] - at - bench.sleep for j, at in submitted.items()]
    print(f"idle pool ({samples} jobs one at a time, 1 worker):")
    print(f"  submit → worker reads it        p50 {ms(percentile(to_start, 50))}, p99 {ms(percentile(to_start, 99))}")
    print(f"  submit → recorded, minus sleep  p50 {ms(percentile(to_record, 50))}, p99 {ms(percentile(to_record, 99))}")


async def queued(bench: Bench, jobs: int, workers: int) -> tuple[float, list[float]]:
    """`jobs` queued first, then `workers` workers: jobs/s and the per-slot gaps between two jobs."""
    await bench.open()
    ids = [await bench.submit(f"user{i % 50}", i) for i in range(jobs)]
    for n in range(workers):
        bench.start_worker(f"q{workers}-{n}")
    await bench.wait_workers_seen(workers)
    began = time.time()
    await bench.wait_recorded(ids)
    elapsed = time.time() - began
    seen = bench.stop_workers()
    await bench.close()
    gaps: list[float] = []
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for worker_id, read_at, sent_at in seen.values():
        by_worker.setdefault(worker_id, []).append((read_at, sent_at))
    for runs in by_worker.values():
        runs.sort()
        gaps.extend(nxt[0] - prev[1] for prev, nxt in itertools.pairwise(runs))
    return jobs / elapsed, gaps


async def failover(bench: Bench) -> float:
    """A worker SIGKILLed with a job: seconds from the kill until another worker reads that job."""
    bench.sleep = 30.0  # the doomed worker holds its job
    await bench.open()
    bench.start_worker("doomed")
    await bench.wait_workers_seen(1)
    job_id = await bench.submit("user", 1)
    while job_id not in bench.dispatcher.status().running:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # it has read the job
    bench.sleep = 0.0
    bench.start_worker("survivor")
    await bench.wait_workers_seen(2)
    killed_at = time.time()
    bench.workers["doomed"].kill()
    bench.workers["doomed"].wait()
    await bench.wait_recorded([job_id])
    seen = bench.stop_workers()
    await bench.close()
    return seen[job_id][1] - killed_at


async def main(args: argparse.Namespace) -> None:
    from tests.fakes.redis_server import RedisServer

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        bench = Bench(Path(tmp), server.url, args.sleep, args.visibility)
        await idle_pool(bench, args.samples)
        rate, gaps = await queued(bench, args.jobs, 3)
        print(f"{args.jobs} queued, 3 workers: slot idle between two jobs p50 {ms(percentile(gaps, 50))}, "
              f"p99 {ms(percentile(gaps, 99))}, max {ms(max(gaps))}; {rate:.0f} jobs/s")
        print(f"throughput ({args.throughput_jobs} jobs of {args.sleep * 1000:.0f} ms sleep):")
        for workers in (1, 2, 3):
            rate, gaps = await queued(bench, args.throughput_jobs, workers)
            ideal = workers / (args.sleep + percentile(gaps, 50))
            print(f"  {workers} worker(s): {rate:.1f} jobs/s (gap p50 {ms(percentile(gaps, 50))}; "
                  f"{rate / ideal:.0%} of sleep+gap bound)")
        took = await failover(bench)
        print(f"failover: visibility {args.visibility:.1f} s, SIGKILL → another worker reads the job in {took:.2f} s "
              f"(visibility + {took - args.visibility:.2f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--throughput-jobs", type=int, default=300)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--visibility", type=float, default=2.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.worker:
        asyncio.run(run_worker(parsed.url, parsed.worker, parsed.sleep, parsed.visibility))
    else:
        asyncio.run(main(parsed))
