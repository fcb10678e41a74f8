"""The bot's costs as the queue grows (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_scale.py [--sizes 0,100,1000,10000,100000] [--acks 60] [--edit-sizes 10,100,1000,10000]
                                     [--scale 0.02] [--job-seconds 5] [--window 20] [--repo PATH]

The real bot (`create_bot`, every cog, discord.py's command tree and delivery) connected over HTTP and the
gateway websocket to the loopback Discord of tests/fakes/discord_server.py (as tests/cogs/test_wire.py
connects it), owning its GenerationService on a temporary data_dir, with the built-in tiny-sdxl model at
64x64 (built once in a temporary dir). Each size runs in a fresh process (its own RSS), against the code of
``--repo`` (default: this checkout; e.g. ``--repo /tmp/before`` after ``git archive bc6607c``): every module,
the fake Discord included, is imported from there.

Per size N of --sizes (the queue paused throughout):
  1) the bot starts on an empty data_dir and connects: RSS idle (after a gc.collect()); then it stops.
  2) N waiting jobs are written in one store transaction with the real JobRepository.insert (and
     Quotas.record), owned by min(N, 1000) users who are members of the fake's server, in its channel, with
     Discord origins: the jobs of a real server that the bot follows after a restart.
  3) restart: a new bot on that data_dir, `bot.start(token)` until it is ready (`ready`), until its
     deliver-pending task has taken up the waiting jobs (`taken up`), and until the loop is quiet (no
     wake-up of the lag probe more than 20 ms late for 2 s; `quiet`, at most --settle seconds); the loop's
     max stall over all of it (LagProbe of benchmarks/measure.py, 10 ms sleeps). RSS after, and the growth
     per 10,000 waiting jobs ((after - idle) * 10,000 / N).
  4) --acks /generate, by new members (a newcomer's job goes near the front of the fair order, moving
     nearly every waiting job) and by owners of waiting jobs (theirs goes at the back) in turn.
     Acknowledgement = from the fake's dispatch of INTERACTION_CREATE (just before it goes on the websocket)
     to the arrival of the interaction callback POST at the fake.
     Each job is cancelled right after (untimed; the queue keeps its length), 50 ms apart. Loop lag over
     the acks. Then `service.submit` --acks times directly (new owners, each cancelled after), and /queue
     and /history acknowledgements (--acks // 2 each) by the owner of the last-written jobs.

Edits per job (--edit-sizes): M jobs are queued through /generate by M/4 members (paused; each followed by
its delivery task with the interaction's token, as on a server), then the queue runs for --window seconds
(after the first job finished, which loads the model). Time is scaled by --scale: Delivery.queue_interval
(10 s) and progress_interval (1.5 s), JobQueue.announce_interval (0.25 s) and the job duration (--job-seconds
of GPU time, slept on the GPU thread instead of the pipeline, which gives blank images) are all multiplied
by it; the tiny model is still loaded, and each result is saved, uploaded and recorded as usual. Counted at
the fake: PATCHes of an original response or a message without files (position and progress edits; position
edits are those that are neither "generating" nor a step), the jobs finished in the window, and the worker's
duty cycle (the share of the window its GPU thread spent in _generate). Before this round's work a position
edit ignored whether its text changed.

The fake Discord runs on the same event loop as the bot (its work is in every figure). 100,000 waiting on the
code before issue 13's round keeps one task per waiting job: leave it out of --sizes if it takes too long
(or run it alone with fewer --acks); the same code queues 10,000 jobs through /generate in minutes (each
acknowledgement pays for the jobs followed so far): leave 10000 out of --edit-sizes there if need be.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py

from measure import LagProbe, percentile  # noqa: E402

MODEL = "tiny"
CONFIG = f"""data_dir = "data"
[inference]
default_model = "{MODEL}"
[quotas]
images_per_day = 0
max_queued_jobs = 0
[tags]
import_default = false
[safety]
rate_results = false
[models.{MODEL}]
builtin = "tiny-sdxl"
size_scale = 0.0625
"""
MAX_OWNERS = 1000
QUEUE_INTERVAL, PROGRESS_INTERVAL, ANNOUNCE_INTERVAL = 10.0, 1.5, 0.25
TIMEOUT = 600.0
QUIET_LAG, QUIET_FOR = 0.020, 2.0


def rss_mib() -> float:
    """This process's resident set (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = [v * 1000 for v in values]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms), "n": len(ms)}


# -- the child: one size in a fresh process ----------------------------------------------------------


class Bench:
    def __init__(self, repo: Path, cache: Path, args: argparse.Namespace) -> None:
        self.repo, self.cache, self.args = repo, cache, args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        (self.tmp / "config.toml").write_text(CONFIG, encoding="utf-8")
        (self.tmp / "data").mkdir()
        (self.tmp / "data" / "models").symlink_to(cache)  # the tiny model is built once for all settings
        self.fake: Any = None
        self.callbacks: dict[str, asyncio.Future[float]] = {}
        self.dispatched: dict[str, float] = {}
        self.patches: list[tuple[float, str]] = []  # (arrival, content) of PATCHes without files
        self.finals = 0

    def config(self) -> Any:
        from bot.config import load_config

        return load_config(self.tmp / "config.toml")

    async def start_fake(self) -> None:
        import discord.gateway
        import discord.http

        from tests.fakes.discord_server import FakeDiscord

        bench = self

        class TimedFake(FakeDiscord):
            """Stamps the arrival of interaction callbacks and counts message edits."""

            async def _answer(self, request: Any) -> tuple[int, Any]:
                arrived = time.perf_counter()
                match = re.fullmatch(r"/interactions/(\d+)/[^/]+/callback", request.path)
                if match is not None:
                    waiter = bench.callbacks.get(match[1])
                    if waiter is not None and not waiter.done():
                        waiter.set_result(arrived)
                elif request.method == "PATCH" and "/messages/" in request.path:
                    if request.files:
                        bench.finals += 1
                    else:
                        content = (request.json or {}).get("content") or ""
                        bench.patches.append((arrived, content))
                result: tuple[int, Any] = await super()._answer(request)
                return result

        self.fake = TimedFake()
        await self.fake.start()
        discord.http.Route.BASE = self.fake.base_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self.fake.gateway_url

    def trim(self) -> None:
        """The fake keeps every request; the benchmark needs none of them after they are counted."""
        self.fake.requests.clear()

    @asynccontextmanager
    async def online(self, worker_class: Any = None) -> AsyncIterator[Any]:
        """A bot owning its service (started by setup_hook, as `animebot run` does) until ready."""
        from bot.core.service import GenerationService
        from bot.discord_app.client import create_bot

        config = self.config()
        service = GenerationService(config, worker_class=worker_class) if worker_class else None
        bot = create_bot(config)
        if service is not None:
            bot.service = service  # still owned by the bot: setup_hook starts it, close() closes it
        ready = asyncio.Event()

        async def on_ready() -> None:
            ready.set()

        bot.add_listener(on_ready)
        bot._connection.guild_ready_timeout = 0.1  # GUILD_CREATE follows READY at once here
        self.started = time.perf_counter()
        runner = asyncio.create_task(bot.start(self.fake.token), name="bot-start")
        waiter = asyncio.create_task(ready.wait())
        try:
            done, _ = await asyncio.wait({runner, waiter}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()
                raise RuntimeError("the bot stopped before it was ready")
            self.ready_at = time.perf_counter()
            yield bot
        finally:
            waiter.cancel()
            await bot.close()
            await asyncio.wait_for(runner, TIMEOUT)

    async def fill(self, count: int, owners: list[int]) -> None:
        """`count` waiting jobs in one transaction (the real insert), owners taking turns."""
        from bot.core.jobs import JobOrigin, JobRepository
        from bot.core.quotas import QuotaLimits, Quotas
        from bot.core.store import Store
        from bot.prompts.builder import PromptChoices
        from bot.prompts.requests import GenerationRequest, resolve_request

        config = self.config()
        resolved = resolve_request(
            GenerationRequest(MODEL, PromptChoices("1girl, smile, waiting"), steps=1), config.models, None, ()
        )
        store = await Store.open(config.database)
        try:
            jobs, quotas = JobRepository(store), Quotas(store, QuotaLimits(None, None))
            async with store.transaction():
                for i, owner in enumerate(owners):
                    await jobs.ensure_user(f"discord:{owner}", f"user{i}")
                for i in range(count):
                    owner = owners[i % len(owners)]
                    origin = JobOrigin(
                        f"discord:{owner}", "", str(self.fake.guild_id), str(self.fake.channel_id), "en"
                    )
                    job_id = await jobs.insert(resolved, origin)
                    await quotas.record(origin.owner_id, job_id, 1)
        finally:
            await store.close()

    async def interact(self, payload: dict[str, Any]) -> float:
        """Dispatch an interaction; seconds until its callback reached the fake."""
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.callbacks[payload["id"]] = waiter
        sent = time.perf_counter()
        await self.fake.dispatch("INTERACTION_CREATE", payload)
        arrived = await asyncio.wait_for(waiter, TIMEOUT)
        del self.callbacks[payload["id"]]
        return arrived - sent

    async def quiet(self, probe: LagProbe, limit: float) -> float:
        """Wait until the probe saw no wake-up later than QUIET_LAG for QUIET_FOR s; when that began."""
        deadline = time.perf_counter() + limit
        seen = len(probe.lags)
        calm_since = time.perf_counter()
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            if any(lag > QUIET_LAG for lag in probe.lags[seen:]):
                calm_since = time.perf_counter()
            seen = len(probe.lags)
            if time.perf_counter() - calm_since >= QUIET_FOR:
                break
        return calm_since

    async def size(self, count: int) -> dict[str, Any]:
        from bot.core.jobs import JobState
        from bot.prompts.builder import PromptChoices
        from bot.prompts.requests import GenerationRequest

        args = self.args
        out: dict[str, Any] = {"size": count, "load_before": load()}
        await self.start_fake()
        owners = [int(self.fake.add_member(f"owner{i}")["user"]["id"]) for i in range(max(1, min(count, MAX_OWNERS)))]
        async with self.online() as bot:
            await bot.service.set_paused(True)
            gc.collect()
            out["rss_idle"] = rss_mib()
        started = time.perf_counter()
        await self.fill(count, owners)
        out["fill_s"] = time.perf_counter() - started

        probe = LagProbe().start()
        async with self.online() as bot:
            ready = self.ready_at - self.started
            pending = [t for t in bot.deliveries.tasks if t.get_name() == "deliver-pending"]
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), TIMEOUT)
            taken = time.perf_counter() - self.started
            calm = await self.quiet(probe, args.settle)
            await probe.stop()
            out["restart"] = {
                "ready": ready,
                "taken_up": taken,
                "quiet": calm - self.started,
                "max_stall": max(probe.lags, default=0.0),
                "stalls_over_50ms": sum(lag > 0.05 for lag in probe.lags),
            }
            gc.collect()
            out["rss_after"] = rss_mib()
            out["waiting"] = await bot.service.queue_length()
            self.trim()

            # /generate acknowledgements, by a newcomer (its job goes near the front of the fair order) and by
            # an owner of waiting jobs (its job goes at the back) in turn; the job cancelled right after.
            acks: list[float] = []
            probe = LagProbe().start()
            for i in range(args.acks):
                if i % 2 or not count:
                    member = self.fake.add_member(f"newcomer{i}")
                else:
                    member = self.fake.members[owners[-1 - (i // 2) % len(owners)]]
                payload = self.fake.slash("generate", member, prompt=f"1girl, smile, ack {i}", steps=1)
                acks.append(await self.interact(payload))
                jobs, _ = await bot.service.history(f"discord:{member['user']['id']}", 0, 1)
                for job in jobs:
                    if job.state == JobState.QUEUED:
                        await bot.service.cancel(job.id, job.owner_id)
                await asyncio.sleep(0.05)
            await probe.stop()
            out["ack"] = pcts(acks)
            out["ack_lag"] = {"p99": percentile(probe.lags, 99) * 1000, "max": max(probe.lags) * 1000}
            self.trim()

            submits: list[float] = []
            for i in range(args.acks):
                request = GenerationRequest(MODEL, PromptChoices(f"1girl, submit {i}"), steps=1)
                before = time.perf_counter()
                job = await bot.service.submit(
                    request, f"discord:{10**15 + i}", guild_id=str(self.fake.guild_id),
                    channel_id=str(self.fake.channel_id),
                )
                submits.append(time.perf_counter() - before)
                await bot.service.cancel(job.id, job.owner_id)
                await asyncio.sleep(0.02)
            out["submit"] = pcts(submits)

            owner = self.fake.members[owners[-1]]
            for command in ("queue", "history"):
                times = []
                for _ in range(max(1, args.acks // 2)):
                    times.append(await self.interact(self.fake.slash(command, owner)))
                    await asyncio.sleep(0.02)
                out[command] = pcts(times)
                self.trim()
        out["load_after"] = load()
        return out

    async def edits(self, count: int) -> dict[str, Any]:
        """`count` jobs queued through /generate, then the queue run for the window (time scaled)."""
        args = self.args
        out: dict[str, Any] = {"queued": count, "load_before": load()}
        await self.start_fake()
        pad = args.job_seconds * args.scale
        busy: list[tuple[float, float]] = []

        from PIL import Image

        from inference.worker import GpuWorker

        class PaddedWorker(GpuWorker):
            """A stand-in GPU: each job sleeps its scaled GPU time on the GPU thread and gives blank images."""

            def _generate(
                self, backend: Any, params: Any, report: Any, token: Any, inputs: Any = None
            ) -> list[Image.Image]:
                started = time.perf_counter()
                time.sleep(pad)
                busy.append((started, time.perf_counter()))
                return [Image.new("RGB", (params.width, params.height)) for _ in params.seeds]

        async with self.online(PaddedWorker) as bot:
            delivery = bot.deliveries
            delivery.queue_interval = QUEUE_INTERVAL * args.scale
            delivery.progress_interval = PROGRESS_INTERVAL * args.scale
            if hasattr(bot.service.queue, "announce_interval"):
                bot.service.queue.announce_interval = ANNOUNCE_INTERVAL * args.scale
            await bot.service.set_paused(True)
            members = [self.fake.add_member(f"member{i}") for i in range(max(1, count // 4))]
            started = time.perf_counter()
            for i in range(count):
                payload = self.fake.slash("generate", members[i % len(members)], prompt=f"1girl, job {i}", steps=1)
                await self.interact(payload)
            out["queue_s"] = time.perf_counter() - started
            self.trim()
            await bot.service.set_paused(False)
            deadline = time.perf_counter() + TIMEOUT
            while self.finals == 0 and time.perf_counter() < deadline:  # the first job loads (builds) the model
                await asyncio.sleep(0.05)
            self.patches.clear()
            finals, window_start = self.finals, time.perf_counter()
            busy.clear()
            probe = LagProbe().start()
            while time.perf_counter() - window_start < args.window and await bot.service.queue_length() > 0:
                await asyncio.sleep(0.1)
                self.trim()
            window = time.perf_counter() - window_start
            await probe.stop()
            ran = self.finals - finals
            position = [c for _, c in self.patches if not re.search(r"generating with|step \d+/\d+", c)]
            out.update(
                window_s=window,
                jobs_run=ran,
                edits=len(self.patches),
                position_edits=len(position),
                position_edits_per_job=len(position) / ran if ran else float("nan"),
                edits_per_s=len(self.patches) / window,
                job_s=sum(end - start for start, end in busy) / len(busy) if busy else float("nan"),
                duty=sum(min(end, window_start + window) - max(start, window_start) for start, end in busy) / window,
                lag_p99=percentile(probe.lags, 99) * 1000,
                lag_max=max(probe.lags) * 1000,
                load_after=load(),
            )
        return out


def child(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    bench = Bench(args.repo, args.cache, args)
    kind, count = args.one.split(":")
    work = bench.size if kind == "size" else bench.edits
    result = asyncio.run(work(int(count)))
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent: one process per setting, then the tables ----------------------------------------------


def run_child(args: argparse.Namespace, cache: Path, setting: str) -> dict[str, Any] | None:
    env = {**os.environ, "PYTHONPATH": str(args.repo)}
    command = [sys.executable, __file__, "--one", setting, "--repo", str(args.repo), "--cache", str(cache)]
    command += ["--acks", str(args.acks), "--scale", str(args.scale), "--job-seconds", str(args.job_seconds)]
    command += ["--window", str(args.window), "--settle", str(args.settle)]
    result = subprocess.run(command, cwd=args.repo, env=env, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return parsed
    print(f"  {setting} failed ({result.returncode}):\n{result.stderr[-3000:]}", flush=True)
    return None


def fmt(p: dict[str, float]) -> str:
    return f"{p['p50']:.1f} / {p['p99']:.1f} / {p['max']:.1f}" if p else "-"


def print_size(r: dict[str, Any]) -> None:
    n = r["size"]
    growth = (r["rss_after"] - r["rss_idle"]) * 10_000 / n if n else float("nan")
    restart = r["restart"]
    print(f"waiting {n:,} (load {r['load_before']} -> {r['load_after']}; written in {r['fill_s']:.1f} s)")
    print(f"  /generate ack p50/p99/max  {fmt(r['ack'])} ms   (loop lag meanwhile p99 {r['ack_lag']['p99']:.1f}, "
          f"max {r['ack_lag']['max']:.1f} ms)")
    print(f"  service.submit p50/p99/max {fmt(r['submit'])} ms")
    print(f"  /queue ack p50/p99/max     {fmt(r['queue'])} ms")
    print(f"  /history ack p50/p99/max   {fmt(r['history'])} ms")
    print(f"  RSS idle {r['rss_idle']:.0f} MiB, with the jobs {r['rss_after']:.0f} MiB "
          f"(+{r['rss_after'] - r['rss_idle']:.0f}; {growth:.1f} MiB per 10k)")
    print(f"  restart: ready {restart['ready']:.2f} s, taken up {restart['taken_up']:.2f} s, quiet "
          f"{restart['quiet']:.2f} s; max stall {restart['max_stall'] * 1000:.0f} ms "
          f"({restart['stalls_over_50ms']} over 50 ms)", flush=True)


def print_edits(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"queued {r['queued']:,} through /generate in {r['queue_s']:.1f} s, run for {r['window_s']:.1f} s "
          f"(load {r['load_before']} -> {r['load_after']}): {r['jobs_run']} jobs, {r['edits']} edits "
          f"({r['edits_per_s']:.1f}/s), position edits per job {r['position_edits_per_job']:.2f}, "
          f"job {r['job_s'] * 1000:.0f} ms (= {r['job_s'] / args.scale:.1f} s unscaled), "
          f"duty {r['duty'] * 100:.0f}%, loop lag p99 {r['lag_p99']:.1f} max {r['lag_max']:.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,100,1000,10000,100000", help="waiting jobs, comma-separated")
    parser.add_argument("--acks", type=int, default=60, help="timed /generate and submits per size")
    parser.add_argument("--edit-sizes", default="10,100,1000,10000", help="jobs queued through /generate, then run")
    parser.add_argument("--scale", type=float, default=0.02, help="time factor of the edits runs")
    parser.add_argument("--job-seconds", type=float, default=5.0, help="GPU seconds of a job, before scaling")
    parser.add_argument("--window", type=float, default=20.0, help="seconds the queue runs per edits setting")
    parser.add_argument("--settle", type=float, default=120.0, help="at most this long waiting for a quiet loop")
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout whose code runs")
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repo = args.repo.resolve()
    if args.one:
        sys.path.insert(0, str(args.repo))
        child(args)
        return
    commit = subprocess.run(
        ["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"bench_scale: code {args.repo} {commit or '(not a git checkout)'}; {os.cpu_count()} CPUs; "
          f"load {load()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-models-") as cache:
        for size in [int(s) for s in args.sizes.split(",") if s]:
            result = run_child(args, Path(cache), f"size:{size}")
            if result is not None:
                print_size(result)
        edit_sizes = [int(s) for s in args.edit_sizes.split(",") if s]
        if edit_sizes:
            print(f"edits per job (time x{args.scale}: position edits at most every {QUEUE_INTERVAL * args.scale:g} s,"
                  f" jobs of {args.job_seconds * args.scale:g} s on a stand-in GPU)")
        for size in edit_sizes:
            result = run_child(args, Path(cache), f"edits:{size}")
            if result is not None:
                print_edits(result, args)


if __name__ == "__main__":
    main()
