"""The queue's state in SQLite alone (bot/core/jobs.py), without a worker or a model: the fair order against
the rule it implements, served counts that survive a restart, claims by several connections and
processes on one database file, and stored parameters of an older release read through their models."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.core.errors import StoreBusy
from bot.core.events import Event, EventBus, JobFinished, JobStarted
from bot.core.jobs import UNREADABLE, JobOrigin, JobRecord, JobRepository, JobState
from bot.core.migrations import MIGRATIONS
from bot.core.queue import JobQueue
from bot.core.quotas import QuotaLimits, Quotas
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, ResolvedRequest, resolve_request

REPO = Path(__file__).resolve().parents[3]


def resolved(tmp_path: Path, seed: int = 1) -> ResolvedRequest:
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    request = GenerationRequest("tiny-sdxl", PromptChoices("1girl"), seed=seed, steps=1, size="64x64")
    return resolve_request(request, config.models, None)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "queue.sqlite")
    yield opened
    await opened.close()


async def submit(jobs: JobRepository, job: ResolvedRequest, owner: str) -> int:
    async with jobs.store.transaction():
        await jobs.ensure_user(owner)
        return await jobs.insert(job, JobOrigin(owner))


class Reference:
    """The rule as the in-memory queue implemented it before: rank = served + place among the owner's
    waiting jobs, ties by submission; served is forgotten when the owner has nothing waiting."""

    def __init__(self) -> None:
        self.waiting: dict[int, str] = {}  # insertion order = id order
        self.served: Counter[str] = Counter()

    def order(self) -> list[int]:
        seen: Counter[str] = Counter()
        ranked = []
        for job_id, owner in self.waiting.items():
            ranked.append((self.served[owner] + seen[owner], job_id))
            seen[owner] += 1
        return [job_id for _, job_id in sorted(ranked)]

    def _forget_if_idle(self, owner: str) -> None:
        if owner not in self.waiting.values():
            self.served.pop(owner, None)

    def claim(self) -> int | None:
        order = self.order()
        if not order:
            return None
        owner = self.waiting.pop(order[0])
        self.served[owner] += 1
        self._forget_if_idle(owner)
        return order[0]

    def cancel(self, job_id: int) -> None:
        owner = self.waiting.pop(job_id)
        self._forget_if_idle(owner)


@pytest.mark.parametrize("seed", range(4))
async def test_the_order_in_sql_is_the_round_robin_rule(store: Store, tmp_path: Path, seed: int) -> None:
    """Random submissions, claims and cancellations by a few users: after every step the order the
    database gives, every position and every claimed job are the reference's."""
    rng = random.Random(seed)
    jobs = JobRepository(store)
    job = resolved(tmp_path)
    reference = Reference()
    owners = [f"user{i}" for i in range(5)]
    for _ in range(150):
        action = rng.random()
        if action < 0.5:
            owner = rng.choice(owners[: rng.randint(1, len(owners))])  # some users ask far more than others
            reference.waiting[await submit(jobs, job, owner)] = owner
        elif action < 0.8:
            claimed = await jobs.claim_next("worker")
            assert (claimed.id if claimed else None) == reference.claim()
        elif reference.waiting:
            victim = rng.choice(list(reference.waiting))
            assert await jobs.cancel_waiting(victim, "someone")
            reference.cancel(victim)
        order = reference.order()
        assert await jobs.order() == order
        assert await jobs.positions(order) == {job_id: n for n, job_id in enumerate(order, start=1)}
        if order:
            probe = rng.choice(order)
            assert await jobs.position(probe) == order.index(probe) + 1
    cleared = await jobs.cancel_all_waiting("admin")
    assert sorted(cleared) == sorted(reference.waiting)
    assert await jobs.order() == [] and await store.fetchall("SELECT * FROM queue_served") == []


async def test_served_counts_survive_a_restart(tmp_path: Path) -> None:
    """Fairness does not reset when the process restarts: a user who was just served stays behind a
    user who was not (before, the counts lived in memory and a restart put `heavy` first by job id)."""
    path = tmp_path / "queue.sqlite"
    job = resolved(tmp_path)
    store = await Store.open(path)
    jobs = JobRepository(store)
    heavy = [await submit(jobs, job, "heavy") for _ in range(3)]
    claimed = await jobs.claim_next("worker")
    assert claimed is not None and claimed.id == heavy[0]
    assert await jobs.finish(claimed.id, [])
    light = await submit(jobs, job, "light")
    await store.close()

    store = await Store.open(path)
    try:
        jobs = JobRepository(store)
        assert await jobs.requeue_interrupted() == []
        assert await jobs.order() == [light, heavy[1], heavy[2]]
    finally:
        await store.close()


async def test_a_job_requeued_after_a_crash_is_not_counted_as_served(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite"
    job = resolved(tmp_path)
    store = await Store.open(path)
    jobs = JobRepository(store)
    first, second, third = [await submit(jobs, job, "a") for _ in range(3)]
    other = await submit(jobs, job, "b")
    claimed = await jobs.claim_next("worker")  # the process dies while `first` runs
    assert claimed is not None and claimed.id == first and claimed.attempts == 1
    await store.close()

    store = await Store.open(path)
    try:
        jobs = JobRepository(store)
        assert await jobs.requeue_interrupted() == [first]
        assert await jobs.order() == [first, other, second, third]  # as if `first` had never started
        again = await jobs.claim_next("worker")
        assert again is not None and again.id == first and again.attempts == 2
    finally:
        await store.close()


async def test_two_connections_claiming_at_once_share_the_jobs_fairly(tmp_path: Path) -> None:
    """Two Store connections on one file, eight claimers each: every job is claimed once, by one of them,
    and the claims, in the order they were committed, follow the fair order. (Which connection wins how
    many is SQLite's busy handler's business: one may even take them all.)"""
    path = tmp_path / "queue.sqlite"
    job = resolved(tmp_path)
    stores = [await Store.open(path), await Store.open(path)]
    try:
        jobs = [JobRepository(store) for store in stores]
        for i in range(60):
            await submit(jobs[0], job, f"user{i % 4 if i < 40 else 9}")
        expected = await jobs[0].order()
        committed: list[tuple[int, str]] = []

        async def claimer(repository: JobRepository, name: str) -> None:
            while (claimed := await repository.claim_next(name)) is not None:
                committed.append((claimed.id, name))  # before any other claim can commit (see below)

        # Each claim is a write transaction: SQLite commits one at a time, and the next claim needs several
        # round trips to its connection's thread after that, so this list is in commit order.
        await asyncio.gather(*(claimer(jobs[n % 2], f"conn{n % 2}-{n}") for n in range(16)))
        assert [job_id for job_id, _ in committed] == expected
        rows = await stores[0].fetchall("SELECT id, state, attempts, claimed_by FROM jobs ORDER BY id")
        assert all(row["state"] == JobState.RUNNING and row["attempts"] == 1 for row in rows)
        assert {row["id"]: row["claimed_by"] for row in rows} == dict(committed)
    finally:
        for store in stores:
            await store.close()


CLAIMER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from bot.core.jobs import JobRepository
    from bot.core.store import Store

    async def main(path: str, name: str) -> None:
        store = await Store.open(Path(path))
        jobs = JobRepository(store)
        print("ready", flush=True)
        sys.stdin.readline()  # all processes start claiming together
        while True:
            async with store.transaction():  # the claim and its log entry commit together
                claimed = await jobs.claim_next(name)
                if claimed is not None:
                    await store.execute("INSERT INTO claim_log (job_id, worker) VALUES (?, ?)", (claimed.id, name))
            if claimed is None:
                break
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_processes_claiming_at_once_never_claim_a_job_twice(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite"
    job = resolved(tmp_path)
    store = await Store.open(path)
    jobs = JobRepository(store)
    for i in range(120):
        await submit(jobs, job, f"user{i % 5 if i < 80 else i % 2}")
    expected = await jobs.order()
    await store.execute("CREATE TABLE claim_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER, worker TEXT)")
    await store.close()

    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), f"process{n}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        for n in range(3)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            assert await asyncio.to_thread(process.wait, 120) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()

    with sqlite3.connect(path) as raw:
        log = raw.execute("SELECT job_id, worker FROM claim_log ORDER BY seq").fetchall()
        rows = raw.execute("SELECT id, state, attempts, claimed_by FROM jobs ORDER BY id").fetchall()
    assert [job_id for job_id, _ in log] == expected  # each job once, in fair order
    assert all(state == "running" and attempts == 1 for _, state, attempts, _ in rows)
    assert {job_id: worker for job_id, worker in log} == {row[0]: row[3] for row in rows}


async def test_rows_of_a_version_2_database_are_read_and_ranked(tmp_path: Path) -> None:
    """A database as release 2 left it: stored requests without the fields added since (sfw,
    nsfw_allowed, count) and with one since dropped, and waiting jobs of two users. After the upgrade
    the jobs read with the fields' defaults, and the waiting ones have their fair ranks."""
    path = tmp_path / "old.sqlite"
    request = {"model": "tiny", "choices": {"prompt": "1girl", "negative": "bad"}, "seed": 3, "legacy_option": 1}
    params = {"prompt": "1girl", "negative_prompt": "bad", "width": 64, "height": 64, "steps": 1, "cfg": 5.0,
              "sampler": "euler_a", "seeds": [3]}
    with sqlite3.connect(path) as raw:
        raw.executescript(MIGRATIONS[0])
        raw.executescript(MIGRATIONS[1])
        raw.execute("INSERT INTO users (id, created_at) VALUES ('a', 0), ('b', 0)")
        for owner in ("a", "a", "a", "b"):
            raw.execute(
                "INSERT INTO jobs (owner_id, model, request, params, image_count, state, created_at, locale) "
                "VALUES (?, 'tiny', ?, ?, 1, 'queued', 0, 'ja')",
                (owner, json.dumps(request), json.dumps(params)),
            )
        raw.execute("PRAGMA user_version = 2")
    store = await Store.open(path)
    try:
        jobs = JobRepository(store)
        job = await jobs.get(1)
        assert job is not None and job.locale == "ja" and job.params.seeds == (3,)
        assert job.request.choices.prompt == "1girl" and job.request.choices.negative == "bad"
        assert job.request.choices.sfw is False and job.request.nsfw_allowed is True and job.request.count == 1
        assert job.request.seed == 3
        assert await jobs.order() == [1, 4, 2, 3]
    finally:
        await store.close()


async def test_claim_next_is_what_a_remote_worker_calls(store: Store, tmp_path: Path) -> None:
    """JobQueue.claim_next(worker_id): None while paused or empty; else the next job, running for that
    worker, with its model and image paths, and JobStarted announced."""
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    events = EventBus()
    heard: list[Event] = []
    events.listen(heard.append)
    queue = JobQueue(store, Quotas(store, QuotaLimits(None, None)), config.models, events, config.data_dir)
    assert await queue.claim_next("remote-1") is None  # nothing waits
    job = await queue.submit(resolved(tmp_path), JobOrigin("u"))
    await queue.set_paused(True)
    assert await queue.claim_next("remote-1") is None
    await queue.set_paused(False)
    item = await queue.claim_next("remote-1")
    assert item is not None and item.job_id == job.id and item.spec.name == "tiny-sdxl"
    assert [path.parent.parent for path in item.image_paths] == [config.data_dir / "images"]
    claimed = await store.fetchone("SELECT state, claimed_by, attempts FROM jobs WHERE id = ?", (job.id,))
    assert claimed is not None and tuple(claimed) == ("running", "remote-1", 1)
    assert JobStarted(job.id, "tiny-sdxl") in heard
    assert await queue.claim_next("remote-2") is None
    await queue.close()


async def test_a_claimed_job_whose_model_is_gone_is_failed_even_if_the_first_write_fails(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed job whose model was removed from the config is failed. If that write meets a busy
    database, the claim raises (the worker pauses and asks again) and the next claim fails the job first:
    it is never left running with no worker on it."""
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    queue = JobQueue(store, Quotas(store, QuotaLimits(None, None)), {}, EventBus(), config.data_dir)
    job = await queue.submit(resolved(tmp_path), JobOrigin("u"))
    fail = queue.jobs.fail
    busy = [True]

    async def fail_once_busy(job_id: int, message: str) -> bool:
        if busy.pop() if busy else False:
            raise StoreBusy("the database is locked by another program")
        return await fail(job_id, message)

    monkeypatch.setattr(queue.jobs, "fail", fail_once_busy)
    with pytest.raises(StoreBusy):
        await queue.claim_next("w")
    assert await queue.claim_next("w") is None
    failed = await queue.jobs.get(job.id)
    assert failed is not None and failed.state == JobState.FAILED
    assert failed.error == "The model tiny-sdxl is no longer configured."
    await queue.close()


async def test_a_job_whose_stored_parameters_cannot_be_read_is_failed_and_the_queue_goes_on(
    store: Store, tmp_path: Path
) -> None:
    """A row the models cannot read (damaged by hand, or by a bug) is failed, and its end announced, when
    it is claimed; it must not make every claim fail (rolled back, the same row first again), so that no
    later job ever runs."""
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    events = EventBus()
    heard: list[Event] = []
    events.listen(heard.append)
    queue = JobQueue(store, Quotas(store, QuotaLimits(None, None)), config.models, events, config.data_dir)
    broken = await queue.submit(resolved(tmp_path, seed=1), JobOrigin("u"))
    fine = await queue.submit(resolved(tmp_path, seed=2), JobOrigin("v"))
    await store.execute("UPDATE jobs SET params = '{\"prompt\": 1}' WHERE id = ?", (broken.id,))
    claimed = await queue.claim_next("w")
    assert claimed is not None and claimed.job_id == fine.id
    row = await store.fetchone("SELECT state, error FROM jobs WHERE id = ?", (broken.id,))
    assert row is not None and tuple(row) == ("failed", UNREADABLE)
    assert JobFinished(broken.id, "failed", UNREADABLE) in heard
    assert await queue.claim_next("w") is None
    await queue.close()


async def test_an_unreadable_job_does_not_hide_the_others_from_delivery_or_history(
    store: Store, tmp_path: Path
) -> None:
    """Lists of jobs (what delivery reads at every start, a user's history) skip a row that cannot be read,
    rather than fail as a whole."""
    jobs = JobRepository(store)
    broken = await submit(jobs, resolved(tmp_path, seed=1), "u")
    fine = await submit(jobs, resolved(tmp_path, seed=2), "u")
    for job_id in (broken, fine):
        assert await jobs.fail(job_id, "stopped")
    await store.execute("UPDATE jobs SET request = 'not json' WHERE id = ?", (broken,))
    assert [job.id for job in await jobs.undelivered()] == [fine]
    page, total = await jobs.history("u")
    assert [job.id for job in page] == [fine] and total == 2


async def test_a_submit_that_raises_store_busy_wrote_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StoreBusy promises that nothing was written (the Discord side tries the submit again on it): the job
    a submit returns is read inside its transaction, so a failed read leaves no job behind to be queued twice."""
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    queue = JobQueue(store, Quotas(store, QuotaLimits(None, None)), config.models, EventBus(), config.data_dir)
    get = queue.jobs.get
    busy = [True]

    async def get_once_busy(job_id: int) -> JobRecord | None:
        if busy.pop() if busy else False:
            raise StoreBusy("disk I/O error")
        return await get(job_id)

    monkeypatch.setattr(queue.jobs, "get", get_once_busy)
    with pytest.raises(StoreBusy):
        await queue.submit(resolved(tmp_path), JobOrigin("u"))
    assert await queue.waiting() == 0
    job = await queue.submit(resolved(tmp_path), JobOrigin("u"))  # the retry
    assert await queue.order() == [job.id]
    await queue.close()
