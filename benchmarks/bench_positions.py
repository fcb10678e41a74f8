"""Queue positions at scale: what the announcer and Delivery cost per waiting job (run by hand; prints figures,
asserts nothing).

    python benchmarks/bench_positions.py [--repo PATH] [--followed 1000,10000,100000] [--acks 10000]
                                         [--restart 10000] [--starts 5]

`--repo` runs the same measurements on another checkout (e.g. the code before issue 13: `git -C /work/main archive
bc6607c | tar -x -C /tmp/before`, then `--repo /tmp/before`); the parts it lacks are said so. Three parts, each on
a temporary data_dir with the built-in tiny-sdxl model configured (never loaded: the queue stays paused):

  1) announcer, per job start, with N jobs waiting and all of them followed (N = --followed): the jobs are put in
     the database with one INSERT ... SELECT (N owners, so fair order is id order) and followed as the Discord
     frontend follows them (this code: JobQueue.follow_positions with the shown position the acknowledgement
     gave; before: EventBus.follow, one asyncio.Queue per job, as service.watch did). Then, --starts times: the
     first job is claimed (JobRepository.claim_next, as a worker would) and ONE announcer pass is timed
     (this code: JobQueue._announce_pass with the coarse pass due; before: the body of the old pass, read
     every followed job's position with JobRepository.positions and publish a JobQueued for each that changed).
     Printed: events published per start, the pass's wall time, the time spent awaiting the store (its DB
     share: Store.fetchall/execute wrapped with perf_counter) and the rest (Python on the loop).
  2) RSS per waiting job followed through /generate: the real bot (create_bot, every cog) in simcord, --acks
     /generate commands by 10 members with the queue paused; the process's resident memory (/proc/self/statm,
     after gc.collect()) before and after, per 10,000 jobs. simcord's own bookkeeping of each interaction is in
     both figures alike; tracemalloc's growth attributed to files under bot/ and discord/ and asyncio is printed
     too (what the bot itself keeps).
  3) restart with --restart jobs waiting (rows put in the database, owned by Discord users in one channel): a new
     bot in simcord, whose on_ready runs deliver_pending; timed from the gateway's start until every waiting job
     is kept by Delivery (this code: Delivery.waiting(); before: its followed set) and simcord has settled, with
     a LagProbe (benchmarks/measure.py: a 10 ms sleep in a loop, how late it wakes) over that time, and the RSS
     growth once they are kept.

Timing is time.perf_counter (simcord virtualizes time.monotonic for the bot). The machine is shared: the load
average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout whose bot is measured")
    parser.add_argument("--followed", default="1000,10000,100000", help="waiting followed jobs, part 1 (0: skip)")
    parser.add_argument("--starts", type=int, default=5, help="job starts timed per size, part 1")
    parser.add_argument("--acks", type=int, default=10000, help="/generate commands, part 2 (0: skip)")
    parser.add_argument("--restart", type=int, default=10000, help="waiting jobs at the restart, part 3 (0: skip)")
    return parser.parse_args(argv)


CONFIG = """data_dir = "data"
[inference]
default_model = "tiny"
[quotas]
images_per_day = 0
max_queued_jobs = 0
[tags]
import_default = false
[models.tiny]
builtin = "tiny-sdxl"
size_scale = 0.0625
[safety]
rate_results = false
"""


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def new_service(root: Path) -> Any:
    from bot.config import load_config
    from bot.core.service import GenerationService

    root.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "config.toml").write_text(CONFIG, encoding="utf-8")
    service = GenerationService(load_config(root / "config.toml"))
    await service.start()
    await service.set_paused(True)
    return service


async def put_waiting(service: Any, count: int, owner: Callable[[int], str], channel_id: str | None) -> list[int]:
    """`count` waiting jobs: one submitted through the service, copied `count - 1` times in one statement."""
    from bot.prompts.builder import PromptChoices
    from bot.prompts.requests import GenerationRequest

    request = GenerationRequest("tiny", PromptChoices("1girl, smile"), steps=1, aspect="1:1")
    first = await service.submit(request, owner(0), channel_id=channel_id, locale="en")
    store = service.store
    owners = [owner(i) for i in range(1, count)]
    async with store.transaction():
        await store.execute(
            "INSERT OR IGNORE INTO users (id, display_name, created_at) SELECT value, '', 0 FROM json_each(?)",
            (json.dumps(owners),),
        )
        await store.execute(
            "INSERT INTO jobs (owner_id, guild_id, channel_id, model, request, params, image_count, state,"
            " reroll_of, created_at, locale, verdict, queue_rank)"
            " SELECT o.value, j.guild_id, j.channel_id, j.model, j.request, j.params, j.image_count, 'queued',"
            " NULL, j.created_at, j.locale, j.verdict, 0 FROM jobs j, json_each(?) o WHERE j.id = ?",
            (json.dumps(owners), first.id),
        )
    return [int(r["id"]) for r in await store.fetchall("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id")]


class StoreClock:
    """Seconds spent awaiting the store (its DB share), by wrapping the Store's statement helpers."""

    def __init__(self, store: Any) -> None:
        self.seconds = 0.0
        for name in ("fetchall", "execute", "insert"):
            original = getattr(store, name)

            async def timed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await _original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - started

            setattr(store, name, timed)


async def announcer_part(root: Path, sizes: list[int], starts: int) -> None:
    from bot.core.events import Event, JobQueued

    print(f"\n1) the announcer per job start, all waiting jobs followed ({load()})")
    for size in sizes:
        service = await new_service(root / f"announce-{size}")
        try:
            queue = service.queue
            started = time.perf_counter()
            ids = await put_waiting(service, size, lambda i: f"discord:{1000 + i}", "1")
            fill = time.perf_counter() - started
            new = hasattr(queue, "follow_positions")
            if new:
                from bot.core.positions import coarse

                for position, job_id in enumerate(ids, start=1):
                    queue.follow_positions(job_id, coarse(position))
                queue.coarse_interval = 0.0
                await queue._announce_pass()  # the follows written where SQL compares them
            else:
                for job_id in ids:
                    service.events.follow(job_id)
                queue._announced = await queue.jobs.positions(service.events.followed())
            published: list[int] = []

            def count(event: Event, out: list[int] = published) -> None:
                if isinstance(event, JobQueued):
                    out.append(event.job_id)

            unlisten = service.events.listen(count)
            clock = StoreClock(service.store)
            walls, dbs, events = [], [], []
            for _ in range(starts):
                job = await queue.jobs.claim_next("bench")
                assert job is not None
                published.clear()
                clock.seconds = 0.0
                before = time.perf_counter()
                if new:
                    queue.unfollow_positions(job.id)
                    queue._coarse_due = True
                    await queue._announce_pass()
                else:  # the body of the old JobQueue._announce_positions pass
                    service.events._followers.pop(job.id, None)
                    positions = await queue.jobs.positions(service.events.followed())
                    for job_id, position in positions.items():
                        if queue._announced.get(job_id) != position:
                            service.events.publish(JobQueued(job_id, position))
                    queue._announced = positions
                walls.append(time.perf_counter() - before)
                dbs.append(clock.seconds)
                events.append(len(published))
            unlisten()
            wall, db = statistics.median(walls), statistics.median(dbs)
            print(
                f"  {size:>7,} followed: {statistics.median(events):>7,.0f} events per start;"
                f" pass {wall * 1000:7.1f} ms (store {db * 1000:6.1f} ms, Python {max(0.0, wall - db) * 1000:6.1f} ms)"
                f"  [median of {starts}; filled in {fill:.1f} s]"
            )
        finally:
            await service.close()


def tracked_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> float:
    """MiB allocated since `before` and still held, by code under bot/, discord/ and asyncio/."""
    total = 0
    for stat in after.compare_to(before, "filename"):
        name = stat.traceback[0].filename
        if any(part in name for part in ("/bot/", "/discord/", "/asyncio/")):
            total += stat.size_diff
    return total / 2**20


async def bot_in_simcord(service: Any) -> Any:
    from bot.discord_app.client import SYNC_KEY, create_bot

    await service.set_state(SYNC_KEY, "")
    return create_bot(service.config, service)


async def settle(env: Any) -> None:
    await env.settle()


async def acks_part(root: Path, count: int) -> None:
    import simcord

    from tests.cogs.conftest import parked_follow

    print(f"\n2) memory per waiting job followed through /generate, {count:,} commands ({load()})")
    service = await new_service(root / "acks")
    service.events.follow = parked_follow(service.events)
    try:
        bot = await bot_in_simcord(service)
        async with simcord.run(bot, settle_timeout=600) as env:
            guild = env.create_guild()
            channel = guild.create_text_channel("general")
            members = [guild.add_member(env.create_user(f"user{i}")) for i in range(10)]
            await members[0].slash(channel, "generate", prompt="warm up", steps=1, aspect="1:1")
            gc.collect()
            rss = rss_mib()
            tracemalloc.start(1)
            snapshot = tracemalloc.take_snapshot()
            started = time.perf_counter()
            for i in range(count):
                await members[i % 10].slash(channel, "generate", prompt=f"1girl, smile, {i}", steps=1, aspect="1:1")
            took = time.perf_counter() - started
            gc.collect()
            grown = rss_mib() - rss
            kept = tracked_growth(snapshot, tracemalloc.take_snapshot())
            tracemalloc.stop()
            tasks = len([t for t in bot.deliveries.tasks if not t.done()])
            print(
                f"  RSS +{grown:.0f} MiB for {count:,} waiting jobs = {grown * 10000 / count:.0f} MiB per 10,000"
                f" (simcord's bookkeeping included); kept by bot/, discord/, asyncio code: {kept:.1f} MiB ="
                f" {kept * 10000 / count:.1f} MiB per 10,000; delivery tasks alive: {tasks:,}"
                f"  [{took:.0f} s of commands]"
            )
    finally:
        await service.close()


async def restart_part(root: Path, count: int) -> None:
    import simcord
    from measure import LagProbe, ms  # this checkout's benchmarks/measure.py, whatever --repo is

    from tests.cogs.conftest import parked_follow

    print(f"\n3) restart with {count:,} jobs waiting ({load()})")
    service = await new_service(root / "restart")
    service.events.follow = parked_follow(service.events)  # before: each job's task waits there (as in the tests)
    try:
        await put_waiting(service, count, lambda i: f"discord:{1456074443980800900 + i % 50}", "1456074443980800999")
        gc.collect()
        rss = rss_mib()
        bot = await bot_in_simcord(service)

        async def later() -> None:  # on_ready's deliver_pending runs below, timed (not inside simcord's attach)
            return None

        bot.on_ready = later
        async with simcord.run(bot, settle_timeout=600) as env:
            probe = LagProbe().start()
            started = time.perf_counter()
            bot.deliveries.spawn(bot.deliveries.deliver_pending(), "deliver-pending")  # what on_ready does
            deliveries = bot.deliveries
            followers = service.events._followers

            def ready() -> bool:
                if hasattr(deliveries, "waiting"):  # this code: a record each, and nothing left to check
                    return bool(deliveries.waiting() == count and deliveries._checker is None)
                # before: a task each, all of them waiting for their job's next event
                return sum(len(q._getters) for queues in followers.values() for q in queues) >= count

            while not ready():
                await asyncio.sleep(0.005)
            registered = time.perf_counter() - started
            await settle(env)
            settled = time.perf_counter() - started
            await probe.stop()
            gc.collect()
            grown = rss_mib() - rss
            tasks = len([t for t in deliveries.tasks if not t.done()])
            print(
                f"  every waiting job kept after {registered:.2f} s (its task waiting for its events, before; its"
                f" record made and checked, now), simcord settled after {settled:.2f} s;"
                f" loop lag over that time: {probe.summary()}; max stall {ms(max(probe.lags, default=0.0))}"
            )
            print(
                f"  RSS +{grown:.0f} MiB with the bot running and {count:,} jobs kept"
                f" (= {grown * 10000 / count:.0f} MiB per 10,000, the bot's own start included); delivery tasks"
                f" alive: {tasks:,}"
            )
    finally:
        await service.close()


async def run(args: argparse.Namespace, root: Path) -> None:
    sizes = [int(x) for x in str(args.followed).split(",") if int(x) > 0]
    if sizes:
        await announcer_part(root, sizes, args.starts)
    if args.acks:
        await acks_part(root, args.acks)
    if args.restart:
        await restart_part(root, args.restart)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    import bot

    logger = logging.getLogger("bot")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # e.g. tasks cut off when part 3's bot stops
    try:
        print(f"bot code from {Path(bot.__file__).resolve().parent.parent}; {os.cpu_count()} CPUs; {load()}")
        with tempfile.TemporaryDirectory(prefix="bench-positions-") as tmp:
            asyncio.run(run(args, Path(tmp)))
    finally:
        logger.setLevel(level)


if __name__ == "__main__":
    main()
