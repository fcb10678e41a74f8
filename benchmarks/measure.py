"""Shared by the benchmark scripts: percentiles, medians of timed runs, millisecond formatting, an event-loop lag
probe."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median_seconds(work: Callable[[], Any], samples: int) -> float:
    """The median seconds of `work()` over `samples` runs."""
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class LagProbe:
    """Sleeps `interval` in a loop on the event loop and records how late each wake-up is."""

    def __init__(self, interval: float = 0.010) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - before - self.interval))

    async def stop(self) -> LagProbe:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self

    def summary(self) -> str:
        if not self.lags:
            return "no samples"
        return (
            f"p50 {ms(percentile(self.lags, 50))}, p99 {ms(percentile(self.lags, 99))}, "
            f"max {ms(max(self.lags))} ({len(self.lags)} wake-ups, {sum(x > 0.05 for x in self.lags)} over 50 ms)"
        )
