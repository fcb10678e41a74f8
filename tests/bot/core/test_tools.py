"""Vary and upscale as new jobs linked to their parent, through the real service and queue on the tiny models:
sizes, seeds, strengths, the parent link, quotas, the nsfw rule, the source bytes the worker gets, a source
that went missing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from bot.config import load_config
from bot.core.errors import UserError
from bot.core.jobs import JobState
from bot.core.queue import SOURCE_GONE
from bot.core.service import GenerationService
from bot.prompts.builder import PromptChoices
from bot.prompts.dialects import load_dialect
from bot.prompts.requests import GenerationRequest
from inference.cache import ModelCache
from inference.registry import load_backend
from inference.specs import RuntimeOptions
from inference.types import WorkItem
from inference.worker import GpuWorker
from tests.bot.conftest import ServiceFactory, request

UNLIMITED = "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"


async def finished(service: GenerationService, job_id: int) -> None:
    job = await service.wait(job_id)
    assert job.state == JobState.DONE, job.error


async def test_vary_and_upscale_are_linked_jobs_of_the_right_size(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    parent = await service.submit(request(seed=100, count=2), "u", guild_id="g", channel_id="c")
    await finished(service, parent.id)
    images = await service.images(parent.id)
    tools = load_dialect(service.config.models["tiny-sdxl"].dialect).tools

    vary = await service.vary(parent.id, 1, "u")
    assert (vary.kind, vary.parent_id, vary.reroll_of) == ("vary", parent.id, None)
    assert vary.params.source is not None
    assert (vary.params.source.job_id, vary.params.source.index, vary.params.source.path) == (
        parent.id, 1, images[1].path
    )
    digest = hashlib.sha256(service.image_path(images[1].path).read_bytes()).hexdigest()
    assert vary.params.source.sha256 == digest
    assert (vary.params.width, vary.params.height, vary.params.count) == (64, 64, 1)
    assert vary.params.strength == tools.vary_strength and vary.params.hires is None
    assert vary.params.seeds[0] not in parent.params.seeds  # a new seed (2 in 2**32 to collide)
    assert vary.params.prompt == parent.params.prompt and vary.channel_id == "c"

    upscale = await service.upscale(parent.id, 0, "u", scale=2.0)
    assert (upscale.kind, upscale.parent_id) == ("upscale", parent.id)
    assert (upscale.params.width, upscale.params.height) == (128, 128)
    assert upscale.params.seeds == (images[0].seed,) == (100,)  # the parent image's own seed
    assert upscale.params.strength == tools.hires_strength
    default = await service.upscale(parent.id, 1, "u")  # the model's scale: x1.5, kept a multiple of 16
    assert (default.params.width, default.params.height) == (96, 96) and default.params.seeds == (101,)

    for job in (vary, upscale, default):
        await finished(service, job.id)
    with Image.open(service.image_path((await service.images(upscale.id))[0].path)) as png:
        assert png.size == (128, 128)
    with Image.open(service.image_path((await service.images(vary.id))[0].path)) as png:
        assert png.size == (64, 64)

    # The link and the kind are rows: read back, and in the history.
    stored = await service.job(upscale.id)
    assert stored is not None and (stored.kind, stored.parent_id) == ("upscale", parent.id)
    assert stored.request.source is not None and stored.request.source.job_id == parent.id
    history, _ = await service.history("u")
    assert [(j.kind, j.parent_id) for j in history] == [
        ("upscale", parent.id), ("upscale", parent.id), ("vary", parent.id), ("txt2img", None)
    ]
    rows = await service.store.fetchall("SELECT kind, parent_id FROM jobs ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("txt2img", None), ("vary", parent.id), ("upscale", parent.id), ("upscale", parent.id)
    ]


async def test_an_upscale_of_an_upscale_beyond_the_largest_size_is_refused(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    parent = await service.submit(request(seed=1), "u")
    await finished(service, parent.id)
    once = await service.upscale(parent.id, 0, "u", scale=2.0)
    await finished(service, once.id)
    twice = await service.upscale(once.id, 0, "u", scale=2.0)  # 256x256: the most at the tiny scale (2048 / 8)
    assert (twice.params.width, twice.params.height, twice.parent_id) == (256, 256, once.id)
    await finished(service, twice.id)
    before = await service.store.scalar("SELECT COUNT(*) FROM jobs")
    with pytest.raises(UserError) as refused:
        await service.upscale(twice.id, 0, "u", scale=1.25)
    assert refused.value.key == "image_too_large"
    with pytest.raises(UserError) as refused:
        await service.upscale(parent.id, 0, "u", scale=3.0)
    assert refused.value.key == "out_of_range"
    assert await service.store.scalar("SELECT COUNT(*) FROM jobs") == before


async def test_quotas_count_each_vary_and_upscale(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 3\nmax_queued_jobs = 0\n")
    parent = await service.submit(request(count=2), "u")
    await finished(service, parent.id)
    vary = await service.vary(parent.id, 0, "u")
    assert (await service.quota("u")).used == 3
    with pytest.raises(UserError) as refused:
        await service.upscale(parent.id, 0, "u")
    assert refused.value.key == "quota_daily"
    assert [j.id for j in (await service.history("u"))[0]] == [vary.id, parent.id]  # nothing else queued
    exempt = await service.upscale(parent.id, 0, "admin", exempt=True)  # as for a reroll
    assert exempt.parent_id == parent.id
    await finished(service, vary.id)
    await finished(service, exempt.id)


async def test_refusals_change_nothing(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    await service.set_paused(True)
    waiting = await service.submit(request(), "u")
    for call in (
        service.vary(waiting.id, 0, "u"),  # not made yet
        service.vary(9999, 0, "u"),
    ):
        with pytest.raises(UserError) as refused:
            await call
        assert refused.value.key in ("image_not_found", "job_not_found")
    await service.set_paused(False)
    await finished(service, waiting.id)
    with pytest.raises(UserError) as refused:
        await service.upscale(waiting.id, 1, "u")  # one image only
    assert refused.value.key == "image_not_found"
    (image,) = await service.images(waiting.id)
    service.image_path(image.path).unlink()
    with pytest.raises(UserError) as refused:
        await service.vary(waiting.id, 0, "u")
    assert refused.value.key == "image_gone"
    assert await service.store.scalar("SELECT COUNT(*) FROM jobs") == 1


async def test_the_asking_channels_nsfw_rule_applies_as_for_a_reroll(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    nsfw = GenerationRequest(
        "tiny-sdxl", PromptChoices("1girl", rating="explicit"), size="64x64", steps=1
    )
    parent = await service.submit(nsfw, "u", channel_id="nsfw-channel")
    await finished(service, parent.id)
    for make in (service.vary, service.upscale):
        with pytest.raises(UserError) as refused:
            await make(parent.id, 0, "u", channel_id="sfw-channel", nsfw_allowed=False)
        assert refused.value.key == "nsfw_not_allowed"
    allowed = await service.vary(parent.id, 0, "u", channel_id="nsfw-channel", nsfw_allowed=True)
    assert allowed.verdict is not None and allowed.verdict.nsfw
    await finished(service, allowed.id)


class RecordingWorker(GpuWorker):
    """The real worker, recording every item it is handed."""

    items: ClassVar[list[WorkItem]] = []

    async def _run_job(self, item: WorkItem) -> None:
        RecordingWorker.items.append(item)
        await super()._run_job(item)


async def test_the_worker_gets_the_source_bytes_and_a_missing_source_fails_only_its_job(
    tmp_path: Path, models_dir: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'data_dir = "data"\n[tags]\nimport_default = false\n{UNLIMITED}', encoding="utf-8")
    config = load_config(path)
    cache = ModelCache(RuntimeOptions("cpu", None, models_dir), capacity=2, location="cpu", loader=load_backend)
    service = GenerationService(config, cache, RecordingWorker)
    RecordingWorker.items = []
    await service.start()
    try:
        parent = await service.submit(request(seed=5, count=2), "u")
        await finished(service, parent.id)
        images = await service.images(parent.id)
        await service.set_paused(True)
        upscale = await service.upscale(parent.id, 1, "u", scale=2.0)
        doomed = await service.vary(parent.id, 0, "u")
        after = await service.submit(request(seed=6), "u")
        service.image_path(images[0].path).write_bytes(b"changed since")  # the vary's source is not the same file
        await service.set_paused(False)
        await finished(service, upscale.id)
        failed = await service.wait(doomed.id)
        assert failed.state == JobState.FAILED and failed.error == SOURCE_GONE
        await finished(service, after.id)  # the queue went on
        by_job = {item.job_id: item for item in RecordingWorker.items}
        assert by_job[parent.id].source_png is None
        assert by_job[upscale.id].source_png == service.image_path(images[1].path).read_bytes()
        assert doomed.id not in by_job  # never handed to the worker
        assert by_job[after.id].source_png is None
        await asyncio.sleep(0)
    finally:
        await service.close()


async def test_the_content_policy_judges_a_vary_and_an_upscale_again(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    parent = await service.submit(request("1girl, lighthouse"), "u")
    await finished(service, parent.id)
    await service.close()
    banned = await make_service(UNLIMITED + '[discord]\nbanned_words = ["lighthouse"]\n')  # the same data dir
    for make in (banned.vary, banned.upscale):
        with pytest.raises(UserError) as refused:
            await make(parent.id, 0, "u")
        assert refused.value.key == "banned_word"
    assert await banned.store.scalar("SELECT COUNT(*) FROM jobs") == 1
