"""The queue and GPU worker through the real service with the tiny models: order, events,
cancellation, failure isolation, model switching, history and delivery records."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bot.core.audit import AuditLog
from bot.core.errors import UserError
from bot.core.events import Event, JobEnded, JobFinished, JobProgress, JobQueued, JobStarted, WatchEvent
from bot.core.jobs import JobState
from bot.core.service import GenerationService
from inference.backends.base import Backend
from inference.memory import Footprint
from inference.png import read_parameters
from inference.registry import load_backend
from inference.specs import MemoryMode, ModelSpec, RuntimeOptions
from inference.types import CancelToken, GenerationParams, LoadProgressCallback, LoraFile, ProgressCallback
from tests.bot.conftest import ServiceFactory, request

UNLIMITED = "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"


class Recorder:
    """Every event the service publishes, in order (an EventBus listener), with a queue to wait on."""

    def __init__(self, service: GenerationService) -> None:
        self.seen: list[Event] = []
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.stop = service.events.listen(self._record)

    def _record(self, event: Event) -> None:
        self.seen.append(event)
        self.queue.put_nowait(event)

    async def next(self) -> Event:
        return await asyncio.wait_for(self.queue.get(), timeout=120)


async def collect_until_done(service: GenerationService, job_ids: list[int]) -> list[Event]:
    recorder = Recorder(service)
    pending = set(job_ids)
    try:
        while pending:
            event = await recorder.next()
            if isinstance(event, JobFinished):
                pending.discard(event.job_id)
    finally:
        recorder.stop()
    return recorder.seen


async def test_submitted_job_runs_and_its_images_are_recorded(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    job = await service.submit(request(seed=11, count=2), "u", guild_id="g", channel_id="c")
    assert job.state == JobState.QUEUED  # persisted before the caller hears back
    done = await service.wait(job.id)
    assert done.state == JobState.DONE and done.attempts == 1 and done.finished_at is not None
    images = await service.images(job.id)
    assert [(i.index, i.seed) for i in images] == [(0, 11), (1, 12)]
    for image in images:
        path = service.image_path(image.path)
        assert read_parameters(path) == image.parameters
        assert "Seed: " + str(image.seed) in image.parameters
        with Image.open(path) as png:
            assert png.size == (64, 64)


async def test_fair_round_robin_between_users(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    heavy = [await service.submit(request(seed=i, steps=1), "heavy") for i in range(6)]
    light = await service.submit(request(seed=99, steps=1), "light")
    other = await service.submit(request(seed=98, steps=1), "other")
    order = await service.queue.order()
    assert order[:4] == [heavy[0].id, light.id, other.id, heavy[1].id]
    assert await service.position(light.id) == 2

    watcher = asyncio.create_task(collect_until_done(service, [j.id for j in [*heavy, light, other]]))
    await asyncio.sleep(0)
    await service.set_paused(False)
    events = await watcher
    started = [e.job_id for e in events if isinstance(e, JobStarted)]
    assert started[:3] == [heavy[0].id, light.id, other.id]
    assert started[3:] == [j.id for j in heavy[1:]]


async def test_a_user_who_was_served_goes_behind_a_newcomer(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    heavy = [await service.submit(request(seed=i, steps=1), "heavy") for i in range(5)]
    await service.wait(heavy[0].id)
    await service.set_paused(True)
    late = await service.submit(request(seed=7, steps=1), "late")
    assert await service.position(late.id) == 1


async def test_progress_and_position_events(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    first = await service.submit(request(steps=3), "a")
    second = await service.submit(request(steps=3), "b")

    watches = [service.watch(job.id) for job in (first, second)]
    heads = [await anext(watch) for watch in watches]  # where each waits now, before anything runs

    async def rest(watch: AsyncGenerator[WatchEvent, None]) -> list[WatchEvent]:
        return [event async for event in watch]

    await service.set_paused(False)
    tails = await asyncio.gather(*(rest(watch) for watch in watches))
    events, second_events = [[head, *tail] for head, tail in zip(heads, tails, strict=True)]
    assert events[0] == JobQueued(first.id, 1) and events[1] == JobStarted(first.id, "tiny-sdxl")
    progress = [e for e in events if isinstance(e, JobProgress)]
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(p.elapsed >= 0 and p.eta >= 0 for p in progress) and progress[-1].eta == 0
    assert isinstance(events[-1], JobEnded) and events[-1].job.state == JobState.DONE
    positions = [e.position for e in second_events if isinstance(e, JobQueued)]
    # Position 1 is announced if the announcer's pass (at most every 0.25 s) comes while the first job runs;
    # a first job quicker than that goes straight from 2 to started. Moving up is tested deterministically
    # in test_watchers_hear_only_changed_positions.
    assert positions in ([2], [2, 1])
    assert isinstance(second_events[-1], JobEnded) and second_events[-1].job.state == JobState.DONE


async def test_cancel_queued_by_owner_or_admin_only(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(), "owner")
    with pytest.raises(UserError) as err:
        await service.cancel(job.id, "stranger")
    assert err.value.key == "not_your_job"
    cancelled = await service.cancel(job.id, "an admin", admin=True)
    assert cancelled.state == JobState.CANCELLED and cancelled.cancelled_by == "an admin"
    assert await service.queue_length() == 0
    with pytest.raises(UserError) as err:
        await service.cancel(job.id, "owner")
    assert err.value.key == "job_finished"
    with pytest.raises(UserError):
        await service.cancel(424242, "owner")
    await service.set_paused(False)
    await service.drain()
    assert (await service.job(job.id)).state == JobState.CANCELLED  # type: ignore[union-attr]
    assert await service.images(job.id) == []


async def test_cancel_running_job_between_steps(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    recorder = Recorder(service)  # every progress event of the job, from its first step
    job = await service.submit(request(steps=40), "owner")
    follower = await service.submit(request(steps=1), "owner")
    while True:
        event = await recorder.next()
        if isinstance(event, JobProgress) and event.job_id == job.id and event.step >= 2:
            break
    await service.cancel(job.id, "owner")
    final = await service.wait(job.id)
    assert final.state == JobState.CANCELLED and final.cancelled_by == "owner"
    assert (await service.wait(follower.id)).state == JobState.DONE  # the worker goes on
    steps = [e.step for e in recorder.seen if isinstance(e, JobProgress) and e.job_id == job.id]
    assert steps[:2] == [1, 2] and max(steps) < 40  # it ran, and stopped between steps before the end
    assert await service.images(job.id) == []


async def test_watchers_hear_only_changed_positions(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    jobs = [await service.submit(request(seed=i, steps=1), f"user{i}") for i in range(4)]
    watches = [service.watch(job.id) for job in jobs]
    try:
        assert [await anext(w) for w in watches] == [JobQueued(job.id, n) for n, job in enumerate(jobs, start=1)]
        late = await service.submit(request(steps=1), "user9")  # at the end: nobody moves

        await service.cancel(jobs[1].id, "user1")  # the jobs behind it move up; the one before it does not
        ended = await anext(watches[1])
        assert isinstance(ended, JobEnded) and ended.job.state == JobState.CANCELLED
        assert await anext(watches[2]) == JobQueued(jobs[2].id, 2)
        assert await anext(watches[3]) == JobQueued(jobs[3].id, 3)
        assert await service.queue_positions("user3") == ([(3, jobs[3].id)], 1)
        assert await service.position(late.id) == 4

        await service.cancel(jobs[0].id, "user0")  # its own position never changed: nothing came before the end
        assert isinstance(await anext(watches[0]), JobEnded)
    finally:
        for watch in watches:
            await watch.aclose()


class FaultyBackend:
    """A real tiny backend with faults injected by prompt: 'boom' raises, 'oom-once' runs out of
    memory on a batch call in the high memory mode, 'oom-always' on every call, 'nan' decodes NaN latents."""

    def __init__(self, real: Backend, calls: list[int]) -> None:
        self.real = real
        self.spec = real.spec
        self.calls = calls  # the batch size of every generate call
        self.memory_mode: MemoryMode = real.memory_mode

    def set_memory_mode(self, mode: MemoryMode) -> None:
        self.real.set_memory_mode(mode)
        self.memory_mode = self.real.memory_mode

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        self.calls.append(params.count)
        if "boom" in params.prompt:
            raise ValueError("injected failure")
        if "oom-always" in params.prompt or ("oom-once" in params.prompt and self.memory_mode == "high"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if "nan" in params.prompt:
            vae = self.real.pipeline.vae  # type: ignore[attr-defined]
            decode = vae.decode

            def nan_decode(*args: Any, **kwargs: Any) -> Any:
                sample = decode(*args, **kwargs)[0]
                return (torch.full_like(sample, float("nan")),)

            vae.decode = nan_decode
            try:
                with np.errstate(invalid="ignore"), contextlib.suppress(Warning):
                    return self.real.generate(params, progress, cancel)
            finally:
                vae.decode = decode
        return self.real.generate(params, progress, cancel)

    def footprint(self) -> Footprint:
        return self.real.footprint()

    def offload(self) -> None:
        self.real.offload()

    def activate(self) -> None:
        self.real.activate()

    def unload(self) -> None:
        self.real.unload()


@pytest.fixture
def calls() -> list[int]:
    return []


@pytest.fixture
def faulty_loader(calls: list[int]) -> Any:
    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        return FaultyBackend(load_backend(spec, runtime, progress), calls)

    return loader


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
async def test_failures_stay_inside_their_job(make_service: ServiceFactory, faulty_loader: Any,
                                              calls: list[int]) -> None:
    service = await make_service(UNLIMITED, loader=faulty_loader)
    await service.set_paused(True)
    boom = await service.submit(request("boom"), "u")
    oom_once = await service.submit(request("oom-once", count=2), "u")
    oom_always = await service.submit(request("oom-always"), "u")
    nan = await service.submit(request("nan"), "u")
    fine = await service.submit(request("fine"), "u")
    await service.set_paused(False)
    results = {job.id: await service.wait(job.id) for job in (boom, oom_once, oom_always, nan, fine)}

    assert results[boom.id].state == JobState.FAILED
    assert results[boom.id].error == "Generation failed (ValueError)."
    assert results[oom_once.id].state == JobState.DONE  # retried one memory mode lower
    assert len(await service.images(oom_once.id)) == 2
    assert results[oom_always.id].state == JobState.FAILED
    assert "Out of GPU memory" in (results[oom_always.id].error or "")
    assert results[nan.id].state == JobState.FAILED
    assert "unusable image" in (results[nan.id].error or "")
    assert results[fine.id].state == JobState.DONE
    # boom 1 call; oom-once: the batch of 2, then again in balanced mode; oom-always: high, balanced, low and
    # minimal; nan 1; fine 1
    assert calls == [1, 2, 2, 1, 1, 1, 1, 1, 1]
    # failed jobs gave their quota back; the worker is still alive
    later = await service.submit(request("after"), "u")
    assert (await service.wait(later.id)).state == JobState.DONE


async def test_switching_models_keeps_the_queue_and_each_jobs_model(make_service: ServiceFactory,
                                                                      tmp_path: Path) -> None:
    service = await make_service(UNLIMITED + f'[models.broken]\nfamily = "sdxl"\npath = "{tmp_path}/nothing"\n')
    assert await service.active_model("guild") == "tiny-sdxl"
    await service.set_paused(True)
    before = [await service.submit(request(model="tiny-sdxl"), f"u{i}") for i in range(3)]
    order = await service.queue.order()

    await service.switch_model("tiny-anima", "admin", guild_id="guild")
    assert await service.active_model("guild") == "tiny-anima"
    assert await service.active_model("another guild") == "tiny-sdxl"
    assert await service.queue.order() == order  # nothing lost or reordered

    with pytest.raises(UserError) as err:
        await service.switch_model("broken", "admin", guild_id="guild")
    assert err.value.key == "model_load_failed" and "tiny-anima stays active" in str(err.value)
    assert await service.active_model("guild") == "tiny-anima"

    after = await service.submit(request(model=await service.active_model("guild")), "u9")
    await service.set_paused(False)
    for job in before:
        assert (await service.wait(job.id)).model == "tiny-sdxl"
    assert (await service.wait(after.id)).model == "tiny-anima"
    audit = await AuditLog(service.store).entries()
    assert [(e.actor_id, e.action, e.guild_id) for e in audit] == [
        ("admin", "model.switch", "guild"), ("admin", "model.switch_failed", "guild"),
    ]
    await service.switch_model("tiny-anima", "owner")  # the global default
    assert await service.active_model(None) == "tiny-anima"
    assert await service.active_model("another guild") == "tiny-anima"


async def test_history_is_paged_newest_first(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    jobs = [await service.submit(request(f"prompt {i}", seed=i), "u") for i in range(5)]
    await service.submit(request(), "someone else")
    page0, total = await service.history("u", page=0, per_page=2)
    page2, _ = await service.history("u", page=2, per_page=2)
    assert total == 5
    assert [j.id for j in page0] == [jobs[4].id, jobs[3].id]
    assert [j.id for j in page2] == [jobs[0].id]
    assert page0[0].request.choices.prompt == "prompt 4"  # the model's default quality tags follow in params
    assert page0[0].params.seeds == (4,) and page0[0].model == "tiny-sdxl"


async def test_delivery_is_recorded_once(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    job = await service.submit(request(), "u")
    await service.wait(job.id)
    assert [j.id for j in await service.undelivered()] == [job.id]
    assert await service.mark_delivered(job.id, "message 1")
    assert not await service.mark_delivered(job.id, "message 2")  # never twice
    assert await service.undelivered() == []
    record = await service.job(job.id)
    assert record is not None and record.delivered


async def test_shutdown_mid_job_leaves_it_for_the_next_start(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    recorder = Recorder(service)
    job = await service.submit(request(steps=40), "u")
    while not (isinstance(event := await recorder.next(), JobProgress) and event.job_id == job.id):
        pass
    await service.close()  # e.g. the bot is stopped while it generates
    restarted = await make_service(UNLIMITED)  # same data_dir
    assert restarted.interrupted == [job.id]
    final = await restarted.wait(job.id)
    assert final.state == JobState.DONE and final.attempts == 2


async def test_a_job_that_keeps_killing_the_process_is_given_up(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(), "u")
    survivor = await service.submit(request(), "u")
    # As if two processes died while running the first job and one while running the second.
    await service.store.execute("UPDATE jobs SET state = 'running', attempts = 3 WHERE id = ?", (job.id,))
    await service.store.execute("UPDATE jobs SET state = 'running', attempts = 1 WHERE id = ?", (survivor.id,))
    await service.close()
    restarted = await make_service(UNLIMITED)
    assert restarted.interrupted == [survivor.id]
    given_up = await restarted.job(job.id)
    assert given_up is not None and given_up.state == JobState.FAILED and "given up" in (given_up.error or "")
    assert (await restarted.quota("u")).used == 1  # its images were given back


async def test_clear_never_cancels_a_job_the_worker_starts_meanwhile(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    first, second = [await service.submit(request(seed=i, steps=1), "heavy") for i in range(2)]
    light = await service.submit(request(seed=9, steps=1), "light")  # runs before `second`
    recorder = Recorder(service)
    await service.set_paused(False)  # the worker wakes up while the admin clears the queue
    cleared = await service.clear_queue("admin")
    await service.drain()
    seen = recorder.seen
    started = {e.job_id for e in seen if isinstance(e, JobStarted)}
    finals = {job.id: await service.job(job.id) for job in (first, second, light)}
    cancelled = {job_id for job_id, job in finals.items() if job and job.state == JobState.CANCELLED}
    assert cleared == len(cancelled)
    assert not started & cancelled  # a job clear() cancelled never ran; one that ran was not cancelled
    for job_id in started:
        assert finals[job_id].state == JobState.DONE  # type: ignore[union-attr]
        assert await service.images(job_id)
    assert await service.queue_length() == 0 and await service.running_jobs() == []


async def test_a_cancel_that_loses_the_race_to_a_claim_stops_the_job(make_service: ServiceFactory,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker claims the job between cancel() reading it (queued) and cancelling it in the store: the
    store refuses the waiting job's cancellation (no job is both started and cancelled as waiting), and
    cancel() turns into a stop request that the worker honours between steps."""
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(steps=40), "owner")
    cancel_waiting = service.queue.jobs.cancel_waiting
    recorder = Recorder(service)

    async def worker_claims_first(job_id: int, by: str) -> bool:
        await service.set_paused(False)
        while not any(isinstance(e, JobStarted) and e.job_id == job_id for e in recorder.seen):
            await recorder.next()
        return await cancel_waiting(job_id, by)

    monkeypatch.setattr(service.queue.jobs, "cancel_waiting", worker_claims_first)
    asked = await service.cancel(job.id, "owner")
    monkeypatch.undo()
    assert asked.state == JobState.RUNNING and asked.cancelled_by == "owner"
    final = await service.wait(job.id)
    assert final.state == JobState.CANCELLED and final.attempts == 1 and final.cancelled_by == "owner"
    assert await service.images(job.id) == []


async def test_a_cancel_that_wins_the_race_keeps_the_job_from_ever_starting(make_service: ServiceFactory,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker wakes up while the job is being cancelled, and the cancellation reaches the store first:
    the claim finds nothing to run."""
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(steps=1), "owner")
    cancel_waiting = service.queue.jobs.cancel_waiting
    recorder = Recorder(service)

    async def worker_wakes_meanwhile(job_id: int, by: str) -> bool:
        cancelled = await cancel_waiting(job_id, by)
        await service.set_paused(False)  # the worker looks for a job right after the cancellation
        return cancelled

    monkeypatch.setattr(service.queue.jobs, "cancel_waiting", worker_wakes_meanwhile)
    cancelled = await service.cancel(job.id, "owner")
    monkeypatch.undo()
    assert cancelled.state == JobState.CANCELLED
    await service.drain()
    final = await service.job(job.id)
    assert final is not None and final.state == JobState.CANCELLED and final.attempts == 0
    assert not any(isinstance(e, JobStarted) for e in recorder.seen)


async def test_a_user_who_cancelled_everything_starts_the_round_robin_afresh(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    recorder = Recorder(service)
    running = await service.submit(request(steps=40), "u1")
    waiting = await service.submit(request(steps=1), "u1")
    await service.set_paused(False)
    while not (isinstance(event := await recorder.next(), JobStarted) and event.job_id == running.id):
        pass
    await service.set_paused(True)
    await service.cancel(waiting.id, "u1")  # u1 has nothing waiting now
    x1 = await service.submit(request(steps=1), "u2")
    x2 = await service.submit(request(steps=1), "u2")
    again = await service.submit(request(steps=1), "u1")
    assert await service.queue.order() == [x1.id, again.id, x2.id]
    recorder.stop()
    await service.cancel(running.id, "u1")
    await service.wait(running.id)


async def test_a_broken_event_listener_does_not_stop_the_worker(make_service: ServiceFactory,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    service = await make_service(UNLIMITED)
    seen: list[Event] = []

    def broken(event: Event) -> None:
        if isinstance(event, JobStarted):
            raise RuntimeError("a frontend bug")

    service.events.listen(broken)
    service.events.listen(seen.append)  # listeners after the broken one still hear every event
    first = await service.submit(request(steps=1), "u")
    second = await service.submit(request(steps=1), "u")
    for job in (first, second):
        assert (await asyncio.wait_for(service.wait(job.id), 60)).state == JobState.DONE
    assert {e.job_id for e in seen if isinstance(e, JobStarted)} == {first.id, second.id}
    assert "a frontend bug" in caplog.text


async def test_a_running_job_whose_cancel_was_asked_is_not_rerun_after_a_crash(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    job = await service.submit(request(), "u")
    # As if the owner asked to cancel it while it ran, and the process died before the worker stopped it.
    await service.store.execute("UPDATE jobs SET state = 'running', attempts = 1, cancelled_by = 'u' WHERE id = ?",
                                (job.id,))
    await service.close()
    restarted = await make_service(UNLIMITED)
    assert restarted.interrupted == []
    final = await restarted.job(job.id)
    assert final is not None and final.state == JobState.CANCELLED and final.cancelled_by == "u"
    assert (await restarted.quota("u")).used == 0
