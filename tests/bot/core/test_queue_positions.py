"""The queue's position announcer (bot/core/queue.py, bot/core/announced.py): a job start or a newcomer with
many followed jobs publishes only the shown positions that changed, read along the order in pages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bot.core.events import Event, JobQueued
from bot.core.positions import coarse, shown_position
from bot.core.service import GenerationService
from tests.bot.conftest import ServiceFactory, request

UNLIMITED = "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"
WAITING = 260


async def waiting_jobs(service: GenerationService, count: int, owner: str | None = None) -> list[int]:
    """`count` jobs of `count` users (or all of `owner`), waiting (the queue paused), first to run first."""
    await service.set_paused(True)
    jobs = [await service.submit(request(steps=1, seed=i), owner or f"user{i}") for i in range(count)]
    return [job.id for job in jobs]


async def next_pass(service: GenerationService) -> None:
    """Wait until the announcer has completed a pass that began after now (asking for two: the first may have
    begun before)."""
    queue = service.queue
    seen = queue.passes
    for target in (seen + 1, seen + 2):
        queue.announce()
        while queue.passes < target:
            await asyncio.sleep(0.01)


def queued_events(service: GenerationService) -> tuple[list[JobQueued], Callable[[], None]]:
    heard: list[JobQueued] = []

    def on_event(event: Event) -> None:
        if isinstance(event, JobQueued):
            heard.append(event)

    return heard, service.events.listen(on_event)


async def test_a_job_start_publishes_only_the_shown_positions_that_change(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    queue = service.queue
    queue.coarse_interval = 0.0
    queue.announced_page_rows = 37  # several pages, with page edges in the middle of buckets
    ids = await waiting_jobs(service, WAITING, "crowd")
    for position, job_id in enumerate(ids, start=1):
        assert queue.follow_positions(job_id, coarse(position)) == coarse(position)
    await asyncio.wait_for(next_pass(service), 60)  # the follows are in; nothing changed: nothing is said
    heard, stop = queued_events(service)
    await asyncio.wait_for(next_pass(service), 60)
    assert heard == []

    # The first job starts (claimed as a worker of the pool would, the queue being paused for the local worker):
    # everybody moves up one.
    claimed = await queue.jobs.claim_next("a test worker")
    assert claimed is not None and claimed.id == ids[0]
    queue.announce()
    queue.unfollow_positions(ids[0])
    await asyncio.wait_for(next_pass(service), 60)
    expected = {
        job_id: shown_position(position - 1, coarse(position))
        for position, job_id in enumerate(ids[1:], start=2)
        if shown_position(position - 1, coarse(position)) != coarse(position)
    }
    assert {e.job_id: e.position for e in heard} == expected
    assert len(heard) == len(expected) and len(heard) < 40  # the front's 10 and a boundary per bucket, not 259
    assert {e.job_id: e.position for e in heard if e.position <= 10} == dict(zip(ids[1:11], range(1, 11), strict=True))
    for position, job_id in enumerate(ids[1:], start=1):  # what each shows now is what the function says
        assert queue.shown_position(job_id) == shown_position(position, coarse(position + 1))

    heard.clear()  # a newcomer served first (nothing served yet; the crowd has had one) moves the rest back one
    newcomer = await service.submit(request(steps=1), "newcomer")
    assert await service.position(newcomer.id) == 1
    await asyncio.wait_for(next_pass(service), 60)
    moved_back = {e.job_id: e.position for e in heard}
    assert set(moved_back) == set(ids[1:11])  # the exact front moves; the coarse windows keep the rest
    assert moved_back[ids[10]] == 20  # position 10 became 11: "about 20"
    stop()


async def test_a_followed_job_with_an_unknown_position_hears_it(make_service: ServiceFactory) -> None:
    """Followed without a shown position (a reroll, service.watch): the announcer reads and announces it,
    also when many are followed at once (then through the paged pass)."""
    service = await make_service(UNLIMITED)
    queue = service.queue
    ids = await waiting_jobs(service, 40)
    heard, stop = queued_events(service)
    for job_id in ids:
        assert queue.follow_positions(job_id) is None
    while len(heard) < len(ids):
        await asyncio.wait_for(next_pass(service), 60)
    assert {e.job_id: e.position for e in heard} == {job_id: coarse(n) for n, job_id in enumerate(ids, start=1)}
    stop()


async def test_unfollowed_jobs_are_forgotten(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    queue = service.queue
    queue.coarse_interval = 0.0
    ids = await waiting_jobs(service, 30)
    for position, job_id in enumerate(ids, start=1):
        queue.follow_positions(job_id, coarse(position))
    queue.follow_positions(ids[-1], coarse(30))  # followed twice: one unfollow leaves it followed
    for job_id in ids:
        queue.unfollow_positions(job_id)
    assert queue.followed_positions() == 1
    heard, stop = queued_events(service)
    await service.cancel(ids[0], "user0")
    await asyncio.wait_for(next_pass(service), 60)
    assert heard == []  # 30 → 29 is still "about 30"; the others are not followed
    rows = await service.store.scalar("SELECT COUNT(*) FROM temp.announced_positions")
    assert rows == 1
    stop()
