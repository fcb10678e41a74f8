"""Discord interactions through the real command tree (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_discord.py [--csv PATH] [--queries 300] [--acks 60] [--followed 100] [--seed 1234]

Discord drops an interaction the bot has not acknowledged within 3 s. This drives the real bot
(`create_bot`, every cog, discord.py 2.7.1's command tree) in-process with simcord, over a
GenerationService on a temporary data_dir that holds the real Danbooru tag list (imported from
$ANIMEBOT_DANBOORU_CSV or ../shared/data/danbooru.csv with bot.prompts.tags.import_csv) and the built-in
tiny-sdxl and tiny-anima models at 64x64 (built once in the temporary dir, deleted afterwards). Then:

  1) /generate autocomplete of `artist`, `quality`, `year` and `rating`, --queries typed values each,
     on a guild whose active model is tiny-sdxl and on one whose model is tiny-anima (Anima dialect:
     artists shown as "@name"). Typed values are 1-6 character prefixes of real names: artists drawn
     half by popularity and half uniformly from the CSV's artists, ~30% typed with spaces, ~10% with
     capitals, ~20% after one or two complete artists and ", " (several artists), on Anima half of them
     typed with the "@"; for quality/year/rating, prefixes of the dialect's choices (10% empty).
     Also counted: the most choices offered (Discord's cap is 25) and how many answers were empty.
  2) /generate acknowledgement (the "queued, position N" reply) with the queue paused and 0, 100 and
     1,000 jobs already waiting (put there with GenerationService.submit, owned by ten users, one of
     them the member who runs the commands); with 1,000 waiting and the worker generating 150-step jobs
     meanwhile; and with --followed jobs waiting that were themselves submitted through /generate (each
     followed by its delivery task, as on a real server; the acknowledgement is printed as the queue
     fills). /queue (by the member, who has 100 jobs waiting, and by one who has 3, the default
     max_queued_jobs) and /history with 1,000 jobs waiting, paused and while generating. Each timed
     /generate queues one more job (1 step), cancelled right after its acknowledgement (untimed, but
     within the lag measurement) so that the queue keeps its length, except in the --followed
     situation, where they add to the followed jobs. Each of these situations runs in a fresh
     simcord Env with a fresh bot around the same service (simcord's own bookkeeping grows with what it
     has seen and would otherwise inflate the later figures).
  3) event-loop lag during each line of (2): a coroutine sleeps 10 ms in a loop and records how late it
     wakes (p50/p99/max). It includes simcord's own work, which shares the loop.
  4) the position broadcast: when a job starts, every waiting job's position changes and is published
     (JobQueued; a submit publishes only the new job's), and Delivery hands each event to the task
     following that job. Timed synchronously through the bot (JobQueue._publish_positions with every
     position changed, the --followed jobs waiting) and through an EventBus and a Delivery following k
     jobs (k = 100, 300, 1,000), without simcord.
  5) garbage collection: a full gc.collect() after start, and after gc.freeze() (which each bot does at
     setup, like `animebot run`: bot/core/collector.py, CollectorPolicy.startup), and the
     pauses of every collection during the run, by generation. Warnings and errors the bot logs are
     counted and printed at the end (not as tracebacks).

What is timed (time.perf_counter; simcord virtualizes time.monotonic for the bot, not perf_counter):
  ack   = from simcord's emission of INTERACTION_CREATE to the bot (a dispatch observer of the simcord
          Env, called just before the gateway event goes out) to the return of the bot's interaction
          callback (InteractionResponse.send_message / defer / autocomplete / send_modal /
          edit_message, wrapped here by a timing shim keyed by interaction id: the moment the callback
          POST has been accepted by simcord's in-process Discord). This is what the 3 s rule is about,
          without network latency (add your round trip to Discord, typically 50-150 ms).
  round = the whole simcord call (member.slash / member.autocomplete): building the payload, dispatch,
          the callback, and simcord settling every task the interaction started (e.g. delivery tasks
          woken by the new job's queue events). An upper bound for the bot's own work.

Tests never assert timings; the figures depend on the machine (check the load average printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import gc
import logging
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import discord  # noqa: E402
import simcord  # noqa: E402
from measure import LagProbe, percentile  # noqa: E402  (benchmarks/measure.py)

from bot.config import Config, load_config  # noqa: E402
from bot.core.events import EventBus, JobQueued  # noqa: E402
from bot.core.jobs import JobState  # noqa: E402
from bot.core.service import GenerationService  # noqa: E402
from bot.discord_app.choices import quality_pairs, rating_pairs, year_pairs  # noqa: E402
from bot.discord_app.client import SYNC_KEY, AnimeBot, create_bot  # noqa: E402
from bot.prompts.builder import PromptChoices  # noqa: E402
from bot.prompts.dialects import Dialect, load_dialect  # noqa: E402
from bot.prompts.requests import GenerationRequest  # noqa: E402
from bot.prompts.tags import import_csv  # noqa: E402
from tests.cogs.conftest import parked_follow  # noqa: E402

T = TypeVar("T")

SDXL, ANIMA = "tiny", "tiny-anima64"
CONFIG = f"""data_dir = "data"
[inference]
default_model = "{SDXL}"
[quotas]
images_per_day = 0
max_queued_jobs = 0
[models.{SDXL}]
builtin = "tiny-sdxl"
size_scale = 0.0625
[models.{ANIMA}]
builtin = "tiny-anima"
size_scale = 0.0625
"""
OPTIONS = ("artist", "quality", "year", "rating")
LONG_STEPS = 150  # the longest job /generate accepts
OTHER_OWNERS = 9  # queue fillers belong to these users and to the benchmark's member (fair order)


def default_csv() -> Path:
    return Path(os.environ.get("ANIMEBOT_DANBOORU_CSV", REPO.parent / "shared" / "data" / "danbooru.csv"))


# -- measuring tools -----------------------------------------------------------------------------------


def stats(seconds: list[float]) -> str:
    if not seconds:
        return "no samples"
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {percentile(ms, 50):7.2f}  p95 {percentile(ms, 95):7.2f}  p99 {percentile(ms, 99):7.2f}  "
        f"max {max(ms):7.2f} ms"
    )


class ErrorLog(logging.Handler):
    """Counts the warnings and errors the bot logs (instead of printing each traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        what = re.sub(r"\d{5,}", "N", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            what += f" — {type(error).__name__}: {str(error)[:160]}"
        self.counts[f"{record.name}: {what}"] += 1

    def print(self) -> None:
        if not self.counts:
            print("nothing logged at WARNING or above")
        for what, count in self.counts.most_common():
            print(f"logged {count}x  {what}")


errors = ErrorLog()


class GcPauses:
    """Durations of the garbage collector's runs, by generation (a full collection stops the loop)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def print(self) -> None:
        for generation, pauses in self.pauses.items():
            if pauses:
                print(
                    f"gc generation {generation}: {len(pauses)} collections, "
                    f"max {max(pauses) * 1000:.1f} ms, total {sum(pauses):.2f} s"
                )


gc_pauses = GcPauses()


class AckClock:
    """Dispatch → callback times per interaction id (see the module docstring)."""

    RESPONSES = ("send_message", "defer", "autocomplete", "send_modal", "edit_message")

    def __init__(self) -> None:
        self.dispatched: dict[int, float] = {}
        self.answered: dict[int, tuple[str, float]] = {}
        self.failed: set[int] = set()  # a response call raised (e.g. Discord refused the message)
        self.last_id: int | None = None

    def _on_dispatch(self, interaction_id: int) -> None:
        self.dispatched[interaction_id] = time.perf_counter()
        self.last_id = interaction_id

    @contextmanager
    def installed(self, env: simcord.Env) -> Iterator[None]:
        # Interaction ids restart with every Env: forget the previous one's.
        self.dispatched.clear()
        self.answered.clear()
        self.failed.clear()
        observe = getattr(env, "_register_dispatch_observer", None)
        if observe is not None:  # simcord 3.2: called just before INTERACTION_CREATE is emitted
            undo_observer = observe(lambda record: self._on_dispatch(int(record.id)))
        else:  # fallback: be the first gateway subscriber of simcord's backend
            subscribers = env.backend.subscribers

            def listener(event: str, payload: Any) -> None:
                if event == "INTERACTION_CREATE":
                    self._on_dispatch(int(payload["id"]))

            subscribers.insert(0, listener)

            def undo_observer() -> None:
                subscribers.remove(listener)

        originals = {name: getattr(discord.InteractionResponse, name) for name in self.RESPONSES}
        for name, original in originals.items():
            setattr(discord.InteractionResponse, name, self._wrap(name, original))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(discord.InteractionResponse, name, original)
            undo_observer()

    def _wrap(self, name: str, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        clock = self

        @functools.wraps(original)
        async def timed(response: discord.InteractionResponse, *args: Any, **kwargs: Any) -> Any:
            try:
                result = await original(response, *args, **kwargs)
            except Exception:
                clock.failed.add(int(response._parent.id))
                raise
            clock.answered.setdefault(int(response._parent.id), (name, time.perf_counter()))
            return result

        return timed

    async def measure(self, call: Awaitable[T], series: Series) -> T:
        """Run one simcord interaction and add its times to `series`."""
        self.last_id = None
        started = time.perf_counter()
        result = await call
        elapsed = time.perf_counter() - started
        ack = None
        if self.last_id is not None and self.last_id in self.answered:
            ack = self.answered[self.last_id][1] - self.dispatched[self.last_id]
        series.add(ack, elapsed, failed=self.last_id in self.failed)
        return result


@dataclass
class Series:
    label: str
    acks: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    unanswered: int = 0
    failed: int = 0  # a first answer was refused; the ack is then that of the error reply that followed
    most_choices: int = 0
    empty: int = 0
    note: str = ""

    def add(self, ack: float | None, elapsed: float, failed: bool = False) -> None:
        self.rounds.append(elapsed)
        self.failed += failed
        if ack is None:
            self.unanswered += 1
        else:
            self.acks.append(ack)

    def print(self, choices: bool = False) -> None:
        extra = f", most choices {self.most_choices}, empty {self.empty}" if choices else ""
        unanswered = f", {self.unanswered} UNANSWERED" if self.unanswered else ""
        if self.failed:
            unanswered += f", {self.failed} FAILED (answered with the error message)"
        print(f"  {self.label}  (n={len(self.rounds)}{extra}{unanswered}){self.note}")
        print(f"      ack   {stats(self.acks)}")
        print(f"      round {stats(self.rounds)}")


# -- typed values ------------------------------------------------------------------------------------


def read_artists(csv_path: Path) -> tuple[list[str], list[int]]:
    names: list[str] = []
    counts: list[int] = []
    with open(csv_path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 3 and row[1] == "1" and row[2].isdigit():
                names.append(row[0])
                counts.append(int(row[2]))
    return names, counts


def typed(name: str, rng: random.Random) -> str:
    text = name[: rng.randint(1, 6)]
    style = rng.random()
    if style < 0.3:
        return text.replace("_", " ")
    if style < 0.4:
        return text.title()
    return text


def artist_queries(artists: tuple[list[str], list[int]], n: int, anima: bool, rng: random.Random) -> list[str]:
    names, counts = artists
    picked = rng.choices(names, weights=counts, k=n // 2) + rng.choices(names, k=n - n // 2)
    queries = []
    for name in picked:
        at = "@" if anima and rng.random() < 0.5 else ""
        text = at + typed(name, rng)
        if rng.random() < 0.2:  # several artists: the complete ones first, as the choices fill them in
            done = rng.choices(names, weights=counts, k=rng.randint(1, 2))
            text = ", ".join(at + d for d in done) + ", " + text
        queries.append(text)
    return queries


def choice_queries(pairs: list[tuple[str, str]], n: int, rng: random.Random) -> list[str]:
    values = [value for _, value in pairs]
    return ["" if rng.random() < 0.1 else typed(rng.choice(values), rng) for _ in range(n)]


def option_queries(
    option: str, dialect: Dialect, artists: tuple[list[str], list[int]], n: int, rng: random.Random
) -> list[str]:
    if option == "artist":
        return artist_queries(artists, n, dialect.artist_prefix == "@", rng)
    pairs = {
        "quality": quality_pairs(dialect),
        "year": year_pairs(dialect),
        "rating": rating_pairs(dialect, nsfw_allowed=False),
    }[option]
    return choice_queries(pairs, n, rng)


# -- the bot -------------------------------------------------------------------------------------------


async def make_service(root: Path, csv_path: Path) -> GenerationService:
    from inference.cache import ModelCache
    from inference.registry import load_backend
    from inference.specs import RuntimeOptions

    (root / "data").mkdir()
    (root / "config.toml").write_text(CONFIG, encoding="utf-8")
    config: Config = load_config(root / "config.toml")
    started = time.perf_counter()
    report = import_csv(csv_path, config.tags_db)
    print(f"{report.summary()} ({time.perf_counter() - started:.1f} s)")
    cache = ModelCache(RuntimeOptions("cpu", None, config.cache_dir), capacity=2, location="cpu", loader=load_backend)
    service = GenerationService(config, cache)
    started = time.perf_counter()
    await service.start()  # outside the bot: its worker's idle wait is not the bot's unfinished work
    # Delivery tasks wait for their job's events in service.watch: declared to simcord as external waits,
    # as the cog tests do, so that a command settles while the jobs it queued wait.
    service.events.follow = parked_follow(service.events)  # type: ignore[method-assign,assignment]
    print(f"service.start() (diffusers import, tag index): {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    await service.worker.load_model(config.models[SDXL])
    print(f"tiny-sdxl build + load: {time.perf_counter() - started:.1f} s")
    # What a full (generation 2) collection costs the loop in this process, and what it would cost
    # if the long-lived objects (tag index, imported libraries, the model) were frozen out of it.
    started = time.perf_counter()
    gc.collect()
    full = time.perf_counter() - started
    tracked = len(gc.get_objects())
    gc.freeze()
    started = time.perf_counter()
    gc.collect()
    frozen = time.perf_counter() - started
    gc.unfreeze()
    print(
        f"full gc.collect() after start: {full * 1000:.0f} ms over {tracked:,} tracked objects; "
        f"{frozen * 1000:.1f} ms after gc.freeze() (the bots below freeze at setup, as `animebot run` does)"
    )
    return service


def filler(i: int, steps: int) -> GenerationRequest:
    return GenerationRequest(SDXL, PromptChoices(f"1girl, smile, night, filler {i}"), seed=i, steps=steps)


async def fill(service: GenerationService, n: int, owners: list[str], steps: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await service.submit(filler(i, steps), owners[i % len(owners)])
    return time.perf_counter() - started


async def clear(env: simcord.Env, service: GenerationService) -> None:
    """Pause, cancel what waits and what runs, and let the bot deliver the cancellations."""
    await service.set_paused(True)
    await service.clear_queue("bench")
    running = service.worker.running_job
    if running is not None:
        await service.cancel(running, "bench", admin=True)
    await service.drain()
    await env.settle()


# -- the benchmark -------------------------------------------------------------------------------------


async def autocomplete_part(
    env: simcord.Env,
    clock: AckClock,
    bot: AnimeBot,
    artists: tuple[list[str], list[int]],
    args: argparse.Namespace,
) -> list[Series]:
    rng = random.Random(args.seed)
    rows: list[Series] = []
    for model in (SDXL, ANIMA):
        guild = env.create_guild(f"guild-{model}")
        channel = guild.create_text_channel("general")
        member = guild.add_member(env.create_user(f"user-{model}"))
        if model != SDXL:
            started = time.perf_counter()
            await bot.service.switch_model(model, "bench", str(guild.id))
            print(f"switch_model({model}) (build + load): {time.perf_counter() - started:.1f} s")
        dialect = load_dialect(bot.config.models[model].dialect)
        print(f"\n/generate autocomplete, model {model} (dialect {dialect.id}):")
        for option in OPTIONS:
            queries = option_queries(option, dialect, artists, args.queries, rng)
            for text in queries[:10]:  # warm-up (first calls import and cache)
                await member.autocomplete(channel, "generate", option, text)
            series = Series(f"{option:8s}")
            slowest = (0.0, "")
            for text in queries:
                before = len(series.acks)
                choices = await clock.measure(member.autocomplete(channel, "generate", option, text), series)
                series.most_choices = max(series.most_choices, len(choices))
                series.empty += not choices
                if len(series.acks) > before and series.acks[-1] > slowest[0]:
                    slowest = (series.acks[-1], text)
            series.note = f"  slowest ack: {slowest[1]!r}"
            series.label = f"{model:13s} {option:8s}"
            series.print(choices=True)
            rows.append(series)
    return rows


async def slash_series(
    clock: AckClock,
    label: str,
    n: int,
    call: Callable[[int], Awaitable[Any]],
    after: Callable[[], Awaitable[None]] | None = None,
) -> Series:
    series = Series(label)
    for i in range(n):
        await clock.measure(call(i), series)
        if after is not None:
            await after()
    series.print()
    return series


async def fresh_bot(service: GenerationService) -> AnimeBot:
    """A new bot around the same service, for a new simcord Env: each queue situation starts with a
    fresh simulated Discord (simcord's bookkeeping grows with the interactions it has seen). The stored
    command-tree hash is dropped so that the bot registers its commands with this Discord."""
    await service.set_state(SYNC_KEY, "")
    return create_bot(service.config, service, freeze_gc=True)  # as `animebot run` does


@dataclass
class Situation:
    label: str
    waiting: int = 0  # jobs put in the queue with GenerationService.submit first
    generating: bool = False  # unpause: the worker generates LONG_STEPS-step jobs meanwhile
    followed: int = 0  # jobs put in the queue with /generate first (each followed by its delivery task)
    others: bool = False  # also time /queue and /history


async def situation(
    service: GenerationService, clock: AckClock, args: argparse.Namespace, spec: Situation
) -> list[tuple[Series, LagProbe]]:
    queue = service.queue
    rows: list[tuple[Series, LagProbe]] = []
    async with simcord.run(await fresh_bot(service), settle_timeout=120) as env:
        with clock.installed(env):
            guild = env.create_guild("queue-guild")
            channel = guild.create_text_channel("general")
            member = guild.add_member(env.create_user("alice"))  # owns a tenth of the waiting jobs
            bob = guild.add_member(env.create_user("bob"))  # owns 3 (the default max_queued_jobs)
            owners = [f"discord:{member.id}"] + [f"discord:{900 + i}" for i in range(OTHER_OWNERS)]

            def generate(i: int) -> Awaitable[Any]:
                return member.slash(channel, "generate", prompt=f"1girl, smile, bench {i}", steps=1, seed=i)

            def queue_show(i: int) -> Awaitable[Any]:
                return member.slash(channel, "queue")

            def queue_bob(i: int) -> Awaitable[Any]:
                return bob.slash(channel, "queue")

            def history(i: int) -> Awaitable[Any]:
                return member.slash(channel, "history")

            async def cancel_newest() -> None:
                """Cancel the job /generate just queued (and let the bot tell its user), so that the
                queue keeps its length and its number of followed jobs."""
                (job,), _ = await service.history(owners[0], 0, 1)
                if job.state == JobState.QUEUED:
                    await service.cancel(job.id, owners[0])
                await env.settle()

            async def measured(
                label: str,
                n: int,
                call: Callable[[int], Awaitable[Any]],
                after: Callable[[], Awaitable[None]] | None = None,
            ) -> None:
                probe = LagProbe().start()
                series = await slash_series(clock, label, n, call, after)
                await probe.stop()
                print(f"      event-loop lag (10 ms sleeps): {probe.summary()}")
                rows.append((series, probe))

            await service.set_paused(True)
            for i in range(3):  # warm-up of this Env
                await generate(i)
            await clear(env, service)
            print(f"\n{spec.label}:")
            if spec.waiting:
                took = await fill(service, spec.waiting, owners, LONG_STEPS if spec.generating else 2)
                await fill(service, 3, [f"discord:{bob.id}"], 2)
                print(f"  ({spec.waiting} jobs submitted with service.submit in {took:.1f} s)")
            if spec.followed:
                series = Series("")
                probe = LagProbe().start()
                for i in range(spec.followed):
                    await clock.measure(generate(i), series)
                await probe.stop()
                n = spec.followed
                marks = sorted({0, 10, n // 4, n // 2, n - n // 4, n - 10} & set(range(n)))
                for a, b in zip(marks, [*marks[1:], n], strict=True):
                    part = Series(f"/generate, {a}-{b - 1} followed jobs waiting", series.acks[a:b], series.rounds[a:b])
                    part.print()
                    rows.append((part, probe))
                print(f"      event-loop lag over these {n} /generate: {probe.summary()}")
                # The bot's own share when a job starts: every waiting job's position changes, is read
                # from the database (one pass), published, and handed to the delivery task following it.
                costs = []
                for _ in range(5):
                    started = time.perf_counter()
                    positions = await queue.jobs.positions(service.events.followed())
                    for job_id, position in positions.items():
                        service.events.publish(JobQueued(job_id, position))
                    costs.append(time.perf_counter() - started)
                    await env.settle()
                print(f"  one position broadcast with {len(positions)} followed jobs (read + publish): {stats(costs)}")
            running = None
            if spec.generating:
                await service.set_paused(False)
                deadline = time.monotonic() + 60
                while service.worker.running_job is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                running = service.worker.running_job
            state = "generating" if spec.generating else "paused"
            waiting = await service.queue_length()
            if spec.others:  # first, while alice's 100 newest jobs are all waiting
                await measured(f"/queue,    {waiting} waiting, {state}, user with 100", args.acks, queue_show)
                await measured(f"/queue,    {waiting} waiting, {state}, user with 3", args.acks, queue_bob)
                await measured(f"/history,  {waiting} waiting, {state}", args.acks, history)
            if spec.followed:  # each timed /generate adds one more followed job
                label = f"/generate, {spec.followed}-{spec.followed + args.acks - 1} followed jobs waiting"
                await measured(label, args.acks, generate)
            else:  # each timed /generate is cancelled after its acknowledgement (untimed)
                await measured(f"/generate, {waiting} waiting, {state}", args.acks, generate, cancel_newest)
            if spec.generating:
                still = service.worker.running_job
                print(f"  (job running at the start: {running}, at the end: {still})")
            await clear(env, service)
    return rows


async def fanout_cost(k: int) -> float:
    """Seconds to publish k JobQueued events (one full position broadcast, as when a job starts) through
    an EventBus to k followed jobs (the queues service.watch reads), without simcord."""
    bus = EventBus()
    inboxes = [bus.follow(job_id) for job_id in range(k)]  # what each delivery task's service.watch reads
    started = time.perf_counter()
    for position, job_id in enumerate(range(k), start=1):
        bus.publish(JobQueued(job_id, position))
    elapsed = time.perf_counter() - started
    assert all(inbox.qsize() == 1 for inbox in inboxes)
    return elapsed


async def run(args: argparse.Namespace, root: Path) -> None:
    artists = read_artists(args.csv)
    service = await make_service(root, args.csv)
    clock = AckClock()
    rows: list[tuple[Series, LagProbe]] = []
    try:
        started = time.perf_counter()
        bot = await fresh_bot(service)
        async with simcord.run(bot, settle_timeout=120) as env:
            with clock.installed(env):
                auto = await autocomplete_part(env, clock, bot, artists, args)
        print(f"  (autocomplete part: {time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
        print(f"\n/generate acknowledgement, {args.acks} timed interactions per line:")
        situations = [
            Situation("queue paused, empty"),
            Situation("queue paused, 100 jobs waiting", waiting=100),
            Situation("queue paused, 1,000 jobs waiting", waiting=1000, others=True),
            Situation(
                f"1,000 jobs waiting, worker generating {LONG_STEPS}-step jobs",
                waiting=1000,
                generating=True,
                others=True,
            ),
        ]
        if args.followed:
            situations.append(
                Situation(
                    f"queue paused, {args.followed} jobs waiting that came through /generate", followed=args.followed
                )
            )
        for spec in situations:
            rows += await situation(service, clock, args, spec)
        print(f"  (acknowledgement part: {time.perf_counter() - started:.0f} s)")
    finally:
        await service.close()
    for k in (100, 300, 1000):
        print(
            f"position broadcast, {k} events to {k} followed jobs: "
            f"{await fanout_cost(k) * 1000:.1f} ms"
        )
    worst_auto = max((max(s.acks) for s in auto if s.acks), default=0.0)
    worst_ack = max((max(s.acks) for s, _ in rows if s.acks), default=0.0)
    unanswered = sum(s.unanswered for s in auto) + sum(s.unanswered for s, _ in rows)
    failed = sum(s.failed for s in auto) + sum(s.failed for s, _ in rows)
    print(
        f"\nslowest autocomplete answer {worst_auto * 1000:.1f} ms, slowest acknowledgement "
        f"{worst_ack * 1000:.1f} ms (Discord's limit: 3000 ms); {unanswered} interactions unanswered, "
        f"{failed} answered with an error"
    )
    gc_pauses.print()
    errors.print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=default_csv(), help="the Danbooru tag CSV")
    parser.add_argument("--queries", type=int, default=300, help="autocomplete queries per option and model")
    parser.add_argument("--acks", type=int, default=60, help="timed interactions per queue situation")
    parser.add_argument(
        "--followed", type=int, default=100, help="jobs queued through /generate for the last part (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    if not args.csv.is_file():
        sys.exit(f"tag CSV not found: {args.csv} (set ANIMEBOT_DANBOORU_CSV or pass --csv)")

    import torch

    print(
        f"discord.py {discord.__version__}, simcord {getattr(simcord, '__version__', '?')}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (figures assume an idle machine)")
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.WARNING)
    gc.callbacks.append(gc_pauses)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-discord-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
