"""The queue in SQLite as it grows (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_claim.py [--sizes 0,1000,10000,100000] [--samples 300]

A GenerationService (queue paused: nothing generates) on a temporary data_dir, with N jobs waiting,
put in the database directly (50 users, round-robin, ranked by JobRepository.rerank). For each N:

  claim   JobRepository.claim_next: the one UPDATE ... RETURNING and the served count, in one transaction
          (goal: p99 under 5 ms with 10k waiting). Each claimed job is finished and one job added
          (untimed), so N stays N.
  ack     what /generate does before it answers: GenerationService.submit (quota check, insert at its
          fair rank) + GenerationService.position, for the user with the most jobs waiting (so the new
          job is last: the longest position count). Goal: p99 under 50 ms with 10k waiting. Each new job
          is cancelled afterwards (untimed).
  /queue  what the /queue command reads: queue_length, paused, queue_positions(user, 10), running_jobs,
          for a user with N/50 jobs waiting.
  history GenerationService.history(user, page 0, 10).
  positions  one pass of the position announcer over 1,000 followed jobs (JobRepository.positions).

Figures depend on the machine and on what else it runs (the load average is printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import ms, percentile  # noqa: E402  (benchmarks/measure.py)

from bot.config import parse_config  # noqa: E402
from bot.core.jobs import params_to_json, request_to_json  # noqa: E402
from bot.core.service import GenerationService  # noqa: E402
from bot.prompts.builder import PromptChoices  # noqa: E402
from bot.prompts.requests import GenerationRequest, resolve_request  # noqa: E402

USERS = 50
HEAVY = "discord:0"  # owns every 50th job: N/50 waiting


def summary(times: list[float]) -> str:
    return f"p50 {ms(percentile(times, 50))}, p99 {ms(percentile(times, 99))}, max {ms(max(times))}"


async def timed(
    n: int, call: Callable[[], Awaitable[Any]], after: Callable[[Any], Awaitable[None]] | None
) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - started)
        if after is not None:
            await after(result)
    return times


def fill(db: Path, n: int, request_json: str, params_json: str) -> None:
    """N waiting jobs of USERS users, written in one transaction (ranks computed afterwards)."""
    with sqlite3.connect(db) as raw:
        raw.executemany(
            "INSERT INTO users (id, created_at) VALUES (?, 0) ON CONFLICT DO NOTHING",
            [(f"discord:{u}",) for u in range(USERS)],
        )
        raw.executemany(
            "INSERT INTO jobs (owner_id, model, request, params, image_count, state, created_at, queue_rank) "
            "VALUES (?, 'tiny-sdxl', ?, ?, 1, 'queued', ?, 0)",
            ((f"discord:{i % USERS}", request_json, params_json, time.time()) for i in range(n)),
        )


async def measure(size: int, samples: int, root: Path) -> None:
    data = root / f"data-{size}"
    config = parse_config({"data_dir": str(data), "quotas": {"images_per_day": 0, "max_queued_jobs": 0}}, root)
    request = GenerationRequest("tiny-sdxl", PromptChoices("1girl, smile"), seed=1, steps=1, size="64x64")
    resolved = resolve_request(request, config.models, None)
    service = GenerationService(config)
    await service.start()
    try:
        await service.set_paused(True)
        started = time.perf_counter()
        await asyncio.to_thread(
            fill, config.database, size, request_to_json(resolved.request), params_to_json(resolved.params)
        )
        await service.queue.jobs.rerank()
        filled = time.perf_counter() - started
        waiting = await service.queue_length()
        print(f"\n{waiting} waiting (filled and ranked in {filled:.1f} s)")
        jobs = service.queue.jobs

        async def claim() -> Any:
            return await jobs.claim_next("bench")

        async def replace(claimed: Any) -> None:
            if claimed is not None:
                await jobs.finish(claimed.id, [])
                await service.submit(request, f"discord:{claimed.id % USERS}")

        print(f"  claim              {summary(await timed(samples, claim, replace))}")

        async def ack() -> Any:
            job = await service.submit(request, HEAVY)
            await service.position(job.id)
            return job

        async def cancel(job: Any) -> None:
            await service.cancel(job.id, HEAVY)

        print(f"  ack (submit+pos.)  {summary(await timed(samples, ack, cancel))}")
        newest = await service.submit(request, HEAVY)
        print(f"    (a new job of {HEAVY} waits at position {await service.position(newest.id)})")
        await service.cancel(newest.id, HEAVY)

        async def queue_show() -> Any:
            await service.queue_length()
            await service.paused()
            await service.queue_positions(HEAVY, 10)
            return await service.running_jobs()

        print(f"  /queue reads       {summary(await timed(samples, queue_show, None))}")

        async def history() -> Any:
            return await service.history(HEAVY, 0, 10)

        print(f"  history page       {summary(await timed(samples, history, None))}")
        followed = (await service.queue.order())[-1000:]

        async def announce() -> Any:
            return await jobs.positions(followed)

        if followed:
            print(f"  positions of {len(followed)} followed {summary(await timed(20, announce, None))}")
    finally:
        await service.close()


async def run(args: argparse.Namespace) -> None:
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-claim-") as tmp:
        for size in args.sizes:
            await measure(size, args.samples, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = [0, 1000, 10000, 100000]
    parser.add_argument("--sizes", type=lambda text: [int(x) for x in text.split(",")], default=sizes)
    parser.add_argument("--samples", type=int, default=300)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
