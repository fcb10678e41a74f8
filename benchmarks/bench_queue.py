"""The durable queue and the GPU worker under load (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_queue.py [--jobs 20] [--steps N] [--submissions 100] [--prototype]

A GenerationService on a temporary data_dir with the built-in tiny-sdxl model (built once, deleted
afterwards), then:

  a) event-loop lag: while the worker drains a queue, a coroutine sleeps 10 ms in a loop and records
     how late it wakes (p50/p99/max; target: max < 50 ms). Also during service start and the first
     model load.
  b) worker duty cycle: pipeline seconds (GpuWorker.busy_seconds) / wall time from the first job's
     start to the last job's record, for --jobs jobs of 1 image and of 4 images at the dialect's
     default steps and size (target >= 95%), with the idle gap between two generations.
  c) throughput of those drains (jobs/s, images/s) and the latency of GenerationService.submit
     (--submissions of them, with the worker idle and while it generates).

--prototype repeats the drains with PrefetchingWorker (below): a candidate change to
inference/worker.py, measured here by subclassing. Tests never assert timings; the figures depend on
the machine (and on anything else it runs: check the load average printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import LagProbe, ms, percentile  # noqa: E402  (benchmarks/measure.py)

from bot.config import Config, parse_config  # noqa: E402
from bot.prompts.builder import PromptChoices  # noqa: E402
from bot.prompts.requests import GenerationRequest  # noqa: E402

MODEL = "tiny-sdxl"
OWNERS = ("discord:1", "discord:2", "discord:3")  # a few users, as on a server (fair order interleaves them)


# -- measuring tools -----------------------------------------------------------------------------------


def make_config(data_dir: Path) -> Config:
    raw = {"data_dir": str(data_dir), "quotas": {"images_per_day": 0, "max_queued_jobs": 0}}
    return parse_config(raw, data_dir)


def job_request(i: int, count: int, steps: int | None, size: str | None = None) -> GenerationRequest:
    return GenerationRequest(
        MODEL, PromptChoices(f"1girl, smile, night, job {i}"), seed=100 * i, steps=steps, count=count, size=size
    )


# -- workers -------------------------------------------------------------------------------------------


def timed_worker_classes() -> tuple[type[Any], type[Any]]:
    """GpuWorker subclasses that record every pipeline run (start, end) on the GPU thread; the second
    one is the prototype. Defined lazily: importing inference.worker imports torch."""
    from inference.backends.base import Backend
    from inference.types import CancelToken, GenerationParams, StepProgress, WorkItem
    from inference.worker import GpuWorker

    class TimedWorker(GpuWorker):
        runs: list[tuple[float, float]]

        def _generate(
            self,
            backend: Backend,
            params: GenerationParams,
            report: Callable[[StepProgress], None],
            token: CancelToken,
            inputs: Any = None,
        ) -> list[Any]:
            started = time.perf_counter()
            try:
                return super()._generate(backend, params, report, token, inputs)
            finally:
                if not hasattr(self, "runs"):
                    self.runs = []
                self.runs.append((started, time.perf_counter()))

    class PrefetchingWorker(TimedWorker):
        """Prototype of a change to GpuWorker._run / _run_job, to see what the time between two
        generations is worth: ask the source for the next job while the current one generates (its
        database claim then no longer sits between two generations), and fetch the model and generate
        in one hop to the GPU thread instead of two (load_model, then generate).

        Measured only; not a recommendation. It saves ~2-3 ms per job (0.1% of a default tiny-sdxl job)
        and has costs: the next job is marked running one job early, so cancelling it (JobQueue.cancel
        then treats it as running, and GpuWorker.cancel does not know it) would not stop it, and a user
        who submits meanwhile is ranked one job later. Error handling is simplified here."""

        async def _run(self) -> None:
            loop = asyncio.get_running_loop()
            upcoming: asyncio.Task[WorkItem] = loop.create_task(self.source.next_job())
            while True:
                item = await upcoming
                upcoming = loop.create_task(self.source.next_job())
                try:
                    await self._run_job(item)
                except asyncio.CancelledError:
                    upcoming.cancel()
                    raise
                except Exception:
                    await self.source.on_failed(item.job_id, "Something went wrong while generating.")

        async def _run_job(self, item: WorkItem) -> None:
            # Same as GpuWorker._run_job for the success path, with cache.get + generate in one GPU call.
            loop = asyncio.get_running_loop()
            token = CancelToken()
            self._running = (item.job_id, token)

            def report(progress: StepProgress) -> None:
                loop.call_soon_threadsafe(self.source.on_progress, item.job_id, progress)

            def work() -> list[Any]:
                backend = self.cache.get(item.spec, None)
                return self._generate(backend, item.params, report, token)

            try:
                images = await self._on_gpu(work)
            except Exception as e:
                await self.source.on_failed(item.job_id, f"Generation failed ({type(e).__name__}).")
                return
            finally:
                self._running = None
            await self._save_slots.acquire()
            task = loop.create_task(self._save(item, images))
            self._saves.add(task)
            task.add_done_callback(self._saves.discard)

    return TimedWorker, PrefetchingWorker


# -- the figures ---------------------------------------------------------------------------------------


@dataclass
class Drain:
    label: str
    jobs: int
    images: int
    wall: float  # first job started → last job recorded (database timestamps)
    busy: float  # pipeline seconds in that time
    gaps: list[float] = field(default_factory=list)  # GPU idle between two consecutive generations
    lag: LagProbe | None = None

    def print(self) -> None:
        duty = self.busy / self.wall if self.wall > 0 else 0.0
        print(f"\n{self.label}")
        print(f"  duty cycle {duty * 100:.1f}%  (busy {self.busy:.2f} s / wall {self.wall:.2f} s)")
        if self.gaps:
            print(
                f"  GPU idle between generations: mean {ms(statistics.mean(self.gaps))}, "
                f"max {ms(max(self.gaps))}; wall - busy per job {ms((self.wall - self.busy) / self.jobs)}"
            )
        print(f"  throughput {self.jobs / self.wall:.3f} jobs/s, {self.images / self.wall:.3f} images/s")
        if self.lag is not None:
            print(f"  event-loop lag (10 ms sleeps): {self.lag.summary()}")


async def drain(service: Any, label: str, requests: list[GenerationRequest]) -> Drain:
    worker = service.worker
    busy_before = worker.busy_seconds
    runs_before = len(getattr(worker, "runs", []))
    probe = LagProbe().start()
    ids = []
    for i, request in enumerate(requests):
        ids.append((await service.submit(request, OWNERS[i % len(OWNERS)])).id)
    await service.drain()
    await probe.stop()
    row = await service.store.fetchone(
        f"SELECT MIN(started_at), MAX(finished_at), SUM(image_count), SUM(state = 'done') FROM jobs "
        f"WHERE id IN ({','.join('?' * len(ids))})",
        ids,
    )
    assert row is not None
    if row[3] != len(ids):
        print(f"  warning: only {row[3]} of {len(ids)} jobs are done")
    runs = getattr(worker, "runs", [])[runs_before:]
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
    return Drain(label, len(ids), int(row[2]), row[1] - row[0], worker.busy_seconds - busy_before, gaps, probe)


async def submission_latency(service: Any, n: int, busy: bool) -> list[float]:
    """Seconds per service.submit for n submissions. busy: while the worker generates a long job."""
    if busy:
        await service.submit(job_request(0, 4, None), "discord:busy")
        deadline = time.monotonic() + 120
        while service.worker.running_job is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    else:
        await service.queue.set_paused(True)
    times = []
    for i in range(n):
        request = job_request(i, 1, 2, "64x64")
        started = time.perf_counter()
        await service.submit(request, OWNERS[i % len(OWNERS)])
        times.append(time.perf_counter() - started)
    await service.queue.clear("bench")
    if not busy:
        await service.queue.set_paused(False)
    await service.drain()
    return times


def latency_summary(times: list[float]) -> str:
    head, tail = statistics.mean(times[:10]), statistics.mean(times[-10:])
    return (
        f"p50 {ms(percentile(times, 50))}, p99 {ms(percentile(times, 99))}, max {ms(max(times))} "
        f"(first 10 mean {ms(head)}, last 10 mean {ms(tail)})"
    )


async def run(args: argparse.Namespace, data_dir: Path, worker_cls: type[Any], label: str, warm: bool) -> None:
    from bot.core.service import GenerationService

    service = GenerationService(make_config(data_dir), worker_class=worker_cls)
    probe = LagProbe().start()
    started = time.perf_counter()
    await service.start()
    print(f"\n== {label} ==")
    print(f"service.start(): {time.perf_counter() - started:.2f} s")
    spec = service.config.models[MODEL]
    started = time.perf_counter()
    await service.worker.load_model(spec)
    what = "first model load (diffusers pipeline import + tiny model build)" if not warm else "model load"
    print(f"{what}: {time.perf_counter() - started:.2f} s")
    await probe.stop()
    print(f"  event-loop lag during start + load: {probe.summary()}")
    try:
        await service.wait((await service.submit(job_request(0, 1, args.steps), "discord:warmup")).id)

        probe = LagProbe().start()
        await asyncio.sleep(2)
        await probe.stop()
        print(f"event-loop lag, worker idle (2 s): {probe.summary()}")

        for count in args.counts:
            requests = [job_request(i, count, args.steps) for i in range(1, args.jobs + 1)]
            p = requests[0]
            title = f"{args.jobs} jobs x {count} image(s), default size, steps {p.steps or 'default'}"
            (await drain(service, title, requests)).print()

        if args.submissions:
            print(f"\nservice.submit latency, {args.submissions} submissions:")
            idle = await submission_latency(service, args.submissions, busy=False)
            print(f"  worker idle (queue paused): {latency_summary(idle)}")
            busy = await submission_latency(service, args.submissions, busy=True)
            print(f"  worker generating:          {latency_summary(busy)}")
    finally:
        await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="jobs per drain (default 20)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the dialect's, 28)")
    parser.add_argument(
        "--counts",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4],
        help="images per job, one drain each (default 1,4)",
    )
    parser.add_argument("--submissions", type=int, default=100, help="for the submit latency (0: skip)")
    parser.add_argument("--prototype", action="store_true", help="also measure the prefetching worker prototype")
    args = parser.parse_args()

    started = time.perf_counter()
    from inference.quiet import silence_library_output

    silence_library_output()  # what service.start() does first, on the event loop: it blocks it this long
    imported = time.perf_counter() - started
    import torch

    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} "
        f"inter-op threads, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (figures assume an idle machine)")
    print(f"diffusers + transformers import (service.start runs it on a thread): {imported:.2f} s")

    timed, prefetching = timed_worker_classes()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        asyncio.run(run(args, Path(tmp) / "current", timed, "GpuWorker (current)", warm=False))
        if args.prototype:
            (Path(tmp) / "prototype").mkdir()
            (Path(tmp) / "prototype" / "models").symlink_to(Path(tmp) / "current" / "models")
            asyncio.run(run(args, Path(tmp) / "prototype", prefetching, "PrefetchingWorker (prototype)", warm=True))


if __name__ == "__main__":
    main()
