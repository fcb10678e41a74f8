"""The garbage-collector policy (bot/core/collector.py) through the real path: a GenerationService whose GPU worker
loads a tiny model for a job and tells the policy, wired the way `animebot run`'s bot wires it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bot.core.collector import CollectorPolicy
from bot.core.service import GenerationService
from bot.discord_app.client import watch_model_loads
from tests.bot.conftest import ServiceFactory, request


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (a freeze lasts for the process)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def tracked_ids() -> set[int]:
    """What a full collection walks: every tracked object outside the permanent generation."""
    return {id(o) for o in gc.get_objects()}


async def run_job(service: GenerationService, model: str = "tiny-sdxl") -> None:
    job = await service.submit(request(model=model, steps=1), "u1")
    assert (await service.wait(job.id)).state == "done"


async def test_a_model_load_through_the_worker_freezes_what_it_left(make_service: ServiceFactory) -> None:
    service = await make_service()
    collector = watch_model_loads(service)
    collector.startup()
    assert service.worker.on_model_loaded == collector.model_loaded
    before = gc.get_freeze_count()

    await run_job(service)

    assert collector.freezes == 1
    assert gc.get_freeze_count() > before + 10_000  # the model's objects (and the imports its load made)
    backend = service.worker.cache.loaded(service.config.models["tiny-sdxl"])
    assert backend is not None
    pipe = backend.pipeline  # type: ignore[attr-defined]
    walked = tracked_ids()
    assert gc.is_tracked(pipe.unet) and id(pipe.unet) not in walked
    assert id(pipe.unet._modules) not in walked and id(pipe.text_encoder) not in walked

    # The next job finds the model in the cache: no load, no second freeze.
    await run_job(service)
    assert collector.freezes == 1


async def test_every_model_load_freezes_and_a_cache_hit_does_not(make_service: ServiceFactory) -> None:
    service = await make_service()  # a cache of two models
    loads: list[str] = []
    collector = CollectorPolicy()
    collector.startup()

    def model_loaded(name: str) -> None:
        loads.append(name)
        collector.model_loaded(name)

    service.worker.on_model_loaded = model_loaded
    await run_job(service, "tiny-sdxl")
    await run_job(service, "tiny-anima")
    await run_job(service, "tiny-anima")
    await run_job(service, "tiny-sdxl")  # parked in RAM while tiny-anima ran: a cache hit
    assert loads == ["tiny-sdxl", "tiny-anima"]

    cache = service.worker.cache
    await service.worker._on_gpu(lambda: cache.evict("tiny-sdxl"))
    await run_job(service, "tiny-sdxl")  # loaded again
    assert loads == ["tiny-sdxl", "tiny-anima", "tiny-sdxl"]
    assert collector.freezes == 3


async def test_a_frozen_model_is_still_freed_when_the_cache_drops_it(make_service: ServiceFactory) -> None:
    service = await make_service()
    watch_model_loads(service).startup()
    await run_job(service)
    spec = service.config.models["tiny-sdxl"]
    cache = service.worker.cache
    backend = cache.loaded(spec)
    assert backend is not None
    pipeline = weakref.ref(backend.pipeline)  # type: ignore[attr-defined]
    unet = weakref.ref(backend.pipeline.unet)  # type: ignore[attr-defined]
    del backend
    assert gc.get_freeze_count() > 0 and pipeline() is not None

    gc.disable()  # reference counting alone, as for frozen objects: no cycle collection may help
    try:
        await service.worker._on_gpu(lambda: cache.evict(spec.name))
        # unload's free_device_memory collects; frozen objects are outside that collection's walk anyway.
        assert pipeline() is None and unet() is None
    finally:
        gc.enable()


async def test_a_failing_callback_does_not_fail_the_job(make_service: ServiceFactory) -> None:
    service = await make_service()

    def broken(name: str) -> None:
        raise RuntimeError("boom")

    service.worker.on_model_loaded = broken
    await run_job(service)  # done, with its images


def test_startup_collects_and_freezes_the_heap() -> None:
    tracked = len(gc.get_objects())
    garbage: list[object] = []
    garbage.append(garbage)  # a cycle: freed by the start-up collection, not frozen
    ref = weakref.ref(cycle := type("Cycle", (), {})())
    cycle.self = cycle
    del garbage, cycle

    CollectorPolicy().startup()

    assert ref() is None
    assert gc.get_freeze_count() >= tracked // 2
    assert len(gc.get_objects()) < tracked // 10  # what a full collection walks now


def test_a_load_before_startup_freezes_nothing_that_startup_should_collect() -> None:
    collector = CollectorPolicy()
    ref = weakref.ref(cycle := type("Cycle", (), {})())
    cycle.self = cycle
    del cycle

    collector.model_loaded("tiny-sdxl")  # e.g. a job requeued at start ran before the bot's setup ended
    assert gc.get_freeze_count() == 0 and collector.freezes == 0
    collector.startup()
    assert ref() is None  # collected, not frozen
