"""The pool worker's own cost (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_pool_worker.py [--jobs 200] [--sleep 0.02]

A redis-server on a free port (tests/fakes/redis_server.py) and one in-process worker (run_worker) whose backend
only sleeps `--sleep` seconds per job (it reports every step and returns a 64x64 image), so what is measured is the
worker side of the pool: reading the inbox, the started/progress events, writing and reading back the PNG, sending
the result and acknowledging. A simulated bot XADDs the jobs and reads the streams with XREAD BLOCK.

  a) latency, one job at a time: XADD → "started" event seen, XADD → result seen, and the result's time minus the
     backend's sleep (the worker side's overhead per job): p50 / p99 / max.
  b) throughput with --jobs jobs queued in the inbox at once: jobs/s, against 1/sleep for a worker that cost
     nothing.
The bot side (claiming from SQLite, the dispatcher) is not included: see the dispatcher's benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis.asyncio as redis  # noqa: E402
from measure import ms, percentile  # noqa: E402  (benchmarks/measure.py)

from bot.config import WorkersSettings, parse_config  # noqa: E402
from bot.core.pool.protocol import EventMessage, JobMessage, Keys, ResultMessage, WireParams, new_token  # noqa: E402
from bot.core.pool.worker_process import run_worker  # noqa: E402
from inference.types import GenerationParams  # noqa: E402
from tests.fakes.redis_server import RedisServer  # noqa: E402

PARAMS = GenerationParams("1girl", "", 64, 64, 8, 5.0, (1,), "euler_a")


class SleepBackend:
    """The real tiny backend for everything but generate(), which only sleeps."""

    def __init__(self, real: Any, seconds: float) -> None:
        self.real = real
        self.spec = real.spec
        self.seconds = seconds
        self.memory_mode = real.memory_mode

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def set_memory_mode(self, mode: Any) -> None:
        self.memory_mode = mode

    def generate(
        self, params: GenerationParams, progress: Any = None, cancel: Any = None, *, source: Any = None, loras: Any = ()
    ) -> list[Any]:
        from PIL import Image

        from inference.types import StepProgress

        started = time.perf_counter()
        time.sleep(self.seconds)
        if progress is not None:
            for step in range(1, params.steps + 1):
                progress(StepProgress(step, params.steps, time.perf_counter() - started))
        return [Image.new("RGB", (params.width, params.height), (40, 80, 120)) for _ in params.seeds]


class Reader:
    """The bot's side: when each job's started event and result were first seen."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client: Any = client
        self.keys = keys
        self.started: dict[int, float] = {}
        self.results: dict[int, float] = {}

    async def run(self) -> None:
        cursors = {self.keys.events: "0", self.keys.results: "0"}
        while True:
            reply = await self.client.xread(cursors, block=1000, count=500)
            now = time.perf_counter()
            for stream, entries in reply or []:
                name = stream.decode()
                for entry_id, fields in entries:
                    cursors[name] = entry_id
                    if name == self.keys.events:
                        event = EventMessage.from_fields(fields)
                        if event.kind == "started" and event.job_id is not None:
                            self.started.setdefault(event.job_id, now)
                    else:
                        message, _pngs = ResultMessage.from_fields(fields)
                        self.results.setdefault(message.job_id, now)


async def dispatch(client: Any, keys: Keys, job_id: int) -> float:
    message = JobMessage(
        job_id=job_id, attempt=1, token=new_token(), model="tiny-sdxl", params=WireParams.of(PARAMS),
        sent_at=time.time(),
    )
    sent = time.perf_counter()
    await client.xadd(keys.inbox("bench"), dict(message.fields()))
    return sent


async def wait_for(results: dict[int, float], job_id: int) -> None:
    while job_id not in results:
        await asyncio.sleep(0.0005)


async def main(jobs: int, sleep: float) -> None:
    from inference.cache import ModelCache
    from inference.registry import load_backend
    from inference.specs import RuntimeOptions

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        config = parse_config({"data_dir": str(Path(tmp) / "data")}, Path(tmp))
        cache = ModelCache(
            RuntimeOptions("cpu", None, Path(tmp) / "models"), capacity=1,
            loader=lambda spec, runtime, report: SleepBackend(load_backend(spec, runtime, report), sleep),
        )
        settings = WorkersSettings(mode="redis", url=server.url, visibility_timeout=30.0)
        stop = asyncio.Event()
        worker = asyncio.create_task(
            run_worker(config, device=None, models=None, worker_id="bench", stop=stop, settings=settings, cache=cache)
        )
        client: Any = redis.Redis.from_url(server.url)
        keys = Keys()
        reader = Reader(client, keys)
        reading = asyncio.create_task(reader.run())
        await dispatch(client, keys, 1)
        await wait_for(reader.results, 1)  # the first job loads the model
        print(f"redis {server.url}; backend sleep {ms(sleep)} per job; {PARAMS.steps} steps, 64x64")

        starts, totals, overheads = [], [], []
        for job_id in range(2, 2 + min(jobs, 200)):
            sent = await dispatch(client, keys, job_id)
            await wait_for(reader.results, job_id)
            starts.append(reader.started[job_id] - sent)
            totals.append(reader.results[job_id] - sent)
            overheads.append(reader.results[job_id] - sent - sleep)
        for label, values in (("XADD -> started", starts), ("XADD -> result", totals), ("overhead", overheads)):
            print(
                f"a) {label:16} p50 {ms(statistics.median(values))}  p99 {ms(percentile(values, 99))}  "
                f"max {ms(max(values))}  ({len(values)} jobs, one at a time)"
            )

        first = 1000
        began = time.perf_counter()
        for job_id in range(first, first + jobs):
            await dispatch(client, keys, job_id)
        await wait_for(reader.results, first + jobs - 1)
        elapsed = time.perf_counter() - began
        print(
            f"b) {jobs} queued jobs: {jobs / elapsed:.1f} jobs/s in {elapsed:.2f}s "
            f"(a worker that cost nothing: {1 / sleep:.1f} jobs/s; {ms(elapsed / jobs - sleep)} per job on top)"
        )
        stop.set()
        await worker
        reading.cancel()
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.02)
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.sleep))
