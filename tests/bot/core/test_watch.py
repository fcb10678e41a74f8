"""GenerationService.watch: the one way to follow a job (delivery, the CLI and /queue use it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace

import pytest

from bot.core.errors import UserError
from bot.core.events import JobEnded, JobFinished, JobProgress, JobQueued, JobStarted, WatchEvent
from bot.core.jobs import JobRecord, JobState
from tests.bot.conftest import ServiceFactory, request

UNLIMITED = "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"


async def test_a_job_that_finished_before_watch_yields_its_end(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    job = await service.submit(request(steps=1), "u")
    done = await service.wait(job.id)
    events = [event async for event in service.watch(job.id)]
    assert events == [JobEnded(done)] and done.state == JobState.DONE


async def test_an_unknown_job_is_a_user_error(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    with pytest.raises(UserError) as error:
        await anext(service.watch(4242))
    assert error.value.key == "job_not_found"
    assert service.events.followed() == []  # nothing left following it


async def test_no_event_is_lost_between_reading_the_job_and_listening(make_service: ServiceFactory,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The job is cancelled (and its end published) while watch() is reading it: watch saw it queued,
    and still ends with the cancellation instead of waiting forever."""
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(steps=1), "u")
    read = service.queue.jobs.get

    async def cancelled_while_read(job_id: int) -> JobRecord | None:
        snapshot = await read(job_id)  # still queued
        monkeypatch.setattr(service.queue.jobs, "get", read)
        await service.cancel(job_id, "u")  # writes the cancellation and publishes JobFinished
        return snapshot

    monkeypatch.setattr(service.queue.jobs, "get", cancelled_while_read)
    events = await asyncio.wait_for(_all(service.watch(job.id)), 60)  # a hang guard, not a timing
    assert isinstance(events[-1], JobEnded) and events[-1].job.state == JobState.CANCELLED
    assert service.events.followed() == []


async def test_watch_follows_a_job_through_its_life(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    ahead = await service.submit(request(steps=2), "a")
    job = await service.submit(request(steps=2), "b")
    watch = service.watch(job.id)
    assert await anext(watch) == JobQueued(job.id, 2)
    # The job ahead leaves while the queue is paused, so the move up is announced before anything runs
    # (with the queue running, `ahead` may finish before the announcer's next pass: no position 1 then).
    await service.cancel(ahead.id, "a")
    assert await asyncio.wait_for(anext(watch), 60) == JobQueued(job.id, 1)  # a hang guard, not a timing
    await service.set_paused(False)
    rest = await asyncio.wait_for(_all(watch), 120)
    kinds = [type(event) for event in rest]
    assert kinds[0] is JobStarted and kinds[-1] is JobEnded
    assert [(e.step, e.total) for e in rest if isinstance(e, JobProgress)] == [(1, 2), (2, 2)]
    end = rest[-1]
    assert isinstance(end, JobEnded) and end.job.state == JobState.DONE and await service.images(job.id)
    assert not any(isinstance(e, JobFinished) for e in rest)  # the end comes once, as JobEnded
    assert (await service.job(ahead.id)) is not None


async def test_watching_a_running_job_starts_from_its_latest_progress(make_service: ServiceFactory) -> None:
    """What /queue shows: the first event of a running job is its last reported step."""
    service = await make_service(UNLIMITED)
    job = await service.submit(request(steps=40), "u")
    follower = service.watch(job.id)
    while not isinstance(event := await asyncio.wait_for(anext(follower), 60), JobProgress) or event.step < 3:
        pass
    late = service.watch(job.id)
    first = await anext(late)
    assert isinstance(first, JobProgress) and first.job_id == job.id and first.step >= 3
    await late.aclose()
    await follower.aclose()
    await service.cancel(job.id, "u")
    assert (await service.wait(job.id)).state == JobState.CANCELLED


async def _all(watch: AsyncGenerator[WatchEvent, None]) -> list[WatchEvent]:
    return [event async for event in watch]


async def test_a_job_that_starts_while_watch_reads_it_is_announced_started_once(
    make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker claims the job (publishing JobStarted) while watch() is reading it, and the read sees it
    running: watch tells that it started once, not twice."""
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(steps=1), "u")
    read = service.queue.jobs.get

    async def started_while_read(job_id: int) -> JobRecord | None:
        snapshot = await read(job_id)
        assert snapshot is not None
        monkeypatch.setattr(service.queue.jobs, "get", read)
        service.events.publish(JobStarted(job_id, job.model))  # as a claim meanwhile would
        return replace(snapshot, state=JobState.RUNNING)

    monkeypatch.setattr(service.queue.jobs, "get", started_while_read)
    watch = service.watch(job.id)
    first = await asyncio.wait_for(anext(watch), 60)  # a hang guard, not a timing
    await service.cancel(job.id, "u")  # still queued in the store: ends it, so the watch ends
    rest = await asyncio.wait_for(_all(watch), 60)
    assert first == JobStarted(job.id, job.model)
    assert [type(event) for event in rest] == [JobEnded]
