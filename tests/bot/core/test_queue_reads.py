"""The queue's per-user reads against the fair order's reference rule (tests/bot/core/test_queue_store.py):
positions_of, which /queue shows, counts along the order once for all of a user's jobs."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.jobs import JobRepository
from bot.core.store import Store
from tests.bot.core.test_queue_store import Reference, resolved, submit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "queue.sqlite")
    yield opened
    await opened.close()


@pytest.mark.parametrize("seed", range(3))
async def test_positions_of_each_user_are_their_places_in_the_order(store: Store, tmp_path: Path, seed: int) -> None:
    """Random submissions, claims and cancellations by users who ask very different amounts: after every step,
    each user's listed positions (the first `limit` of their jobs, first to run first) and their count are the
    reference's, and each agrees with position()."""
    rng = random.Random(seed)
    jobs = JobRepository(store)
    job = resolved(tmp_path)
    reference = Reference()
    owners = [f"user{i}" for i in range(5)]
    for _ in range(120):
        action = rng.random()
        if action < 0.6:
            owner = rng.choice(owners[: rng.randint(1, len(owners))])
            reference.waiting[await submit(jobs, job, owner)] = owner
        elif action < 0.85:
            claimed = await jobs.claim_next("worker")
            assert (claimed.id if claimed else None) == reference.claim()
        elif reference.waiting:
            victim = rng.choice(list(reference.waiting))
            assert await jobs.cancel_waiting(victim, "someone")
            reference.cancel(victim)
        order = reference.order()
        for owner in owners:
            limit = rng.choice((1, 3, 10))
            theirs = [(n, job_id) for n, job_id in enumerate(order, start=1) if reference.waiting[job_id] == owner]
            assert await jobs.positions_of(owner, limit) == (theirs[:limit], len(theirs))
            for position, job_id in theirs[:limit]:
                assert await jobs.position(job_id) == position


async def test_positions_of_a_user_with_nothing_waiting(store: Store) -> None:
    assert await JobRepository(store).positions_of("nobody", 10) == ([], 0)
