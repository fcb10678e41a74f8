"""Jobs that start from an image (img2img, vary, upscale) through the worker pool: the wire carries the new params
(LoRAs, source, strength, hires) and the source's PNG bytes, checked when read; a real worker on a real
redis-server gets those bytes in its WorkItem, makes the upscale's larger size, and leaves no image in its inbox."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import pytest
from PIL import Image
from redis.asyncio import Redis

from bot.core.events import JobFinished
from bot.core.jobs import JobOrigin
from bot.core.pool.protocol import JobMessage, Keys, ProtocolError, WireParams, new_token
from bot.core.queue import SOURCE_GONE
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, resolve_request
from inference.types import GenerationParams, HiresFix, LoraWeight, SourceImage, WorkItem
from inference.worker import GpuWorker
from tests.bot.core.pool.fake_bot import FakeBot, eventually
from tests.bot.core.pool.test_pool_end_to_end import Bot, pool  # noqa: F401  (fixture)
from tests.bot.core.pool.test_source import (  # noqa: F401  (fixtures)
    StartWorker,
    bot,
    cache,
    client,
    config,
    start_worker,
)


def png(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "PNG")
    return out.getvalue()


SOURCE = png()
SHA = hashlib.sha256(SOURCE).hexdigest()
PARAMS = GenerationParams(
    "1girl", "bad", 128, 96, 20, 5.0, (7,), "euler_a",
    loras=(LoraWeight("style", "ab" * 32, 0.8, "0123456789ab"),),
    source=SourceImage("images/2026/1-0-7.png", SHA, job_id=1, index=0),
    strength=0.45,
    hires=HiresFix(1.5, 0.4),
)


def message(params: GenerationParams = PARAMS) -> JobMessage:
    return JobMessage(
        job_id=2, attempt=1, token="0" * 32, model="tiny-sdxl", params=WireParams.of(params), sent_at=0.0
    )


def test_the_new_params_cross_the_wire_unchanged() -> None:
    fields = message().fields(SOURCE)
    entry = {k.encode(): v for k, v in fields.items()}
    read = JobMessage.from_fields(entry)
    assert read.params.to_params() == PARAMS
    assert read.checked_source(entry) == SOURCE
    plain = GenerationParams("1girl", "", 64, 64, 2, 5.0, (1,), "euler_a")
    fields = message(plain).fields()
    assert set(fields) == {"job"} and JobMessage.from_fields({b"job": fields["job"]}).params.to_params() == plain


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (None, "missing"),
        (png((200, 0, 0)), "not the one the job names"),
        (b"GIF89a" + SOURCE[6:], "not a PNG"),
    ],
)
def test_a_source_that_does_not_match_the_job_is_refused(source: bytes | None, why: str) -> None:
    entry: dict[bytes, Any] = {b"job": message().to_json()}
    if source is not None:
        entry[b"source"] = source
    with pytest.raises(ProtocolError, match=why):
        JobMessage.from_fields(entry).checked_source(entry)  # the hash: checked by the worker, on a thread
    if source is None or not source.startswith(b"\x89PNG"):  # what the sender checks (the queue hashed it)
        with pytest.raises(ProtocolError, match=why):
            message().fields(source)


def test_a_source_for_a_job_without_one_and_unknown_fields_are_refused() -> None:
    plain = message(GenerationParams("1girl", "", 64, 64, 2, 5.0, (1,), "euler_a"))
    with pytest.raises(ProtocolError, match="without one"):
        JobMessage.from_fields({b"job": plain.to_json(), b"source": SOURCE})
    with pytest.raises(ProtocolError, match="unexpected fields"):
        JobMessage.from_fields({b"job": plain.to_json(), b"extra": b"1"})
    bad = WireParams.of(PARAMS).model_dump()
    bad["source"]["sha256"] = "not-hex"
    with pytest.raises(ValueError):
        WireParams.model_validate(bad)


async def test_an_upscale_runs_on_a_real_worker_with_its_source_bytes(
    pool: Bot, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    items: list[WorkItem] = []
    run_job = GpuWorker._run_job

    async def recording(self: GpuWorker, item: WorkItem) -> None:
        items.append(item)
        await run_job(self, item)

    monkeypatch.setattr(GpuWorker, "_run_job", recording)
    parent = await pool.submit("alice", steps=2, count=1)
    await pool.until(lambda: bool(pool.finished(parent.id)), "the parent")
    (image,) = await pool.queue.jobs.images(parent.id)
    data = (pool.config.data_dir / image.path).read_bytes()
    source = SourceImage(image.path, hashlib.sha256(data).hexdigest(), parent.id, 0)

    def upscale(source: SourceImage) -> GenerationRequest:
        return GenerationRequest(
            "tiny-sdxl", PromptChoices("1girl"), seed=image.seed, steps=2, size="64x64", kind="upscale",
            source=source, scale=2.0,
        )

    job = await pool.queue.submit(resolve_request(upscale(source), pool.config.models, None), JobOrigin("alice"))
    await pool.until(lambda: bool(pool.finished(job.id)), "the upscale")
    assert pool.finished(job.id) == [JobFinished(job.id, "done")]
    (made,) = await pool.queue.jobs.images(job.id)
    with Image.open(pool.config.data_dir / made.path) as result:
        assert result.size == (128, 128)
    by_job = {item.job_id: item for item in items}
    assert by_job[parent.id].source_png is None and by_job[job.id].source_png == data
    assert by_job[job.id].params.source == source
    redis = Redis.from_url(pool.url)
    try:
        entries: Any = await redis.xrange(Keys().inbox("gpu-1"))
        assert [fields.get(b"source") for _, fields in entries] == [None]  # the upscale's entry is gone
    finally:
        await redis.aclose()

    gone = SourceImage(image.path, "0" * 64, parent.id, 0)  # not the file's hash any more: it changed
    failed = await pool.queue.submit(resolve_request(upscale(gone), pool.config.models, None), JobOrigin("alice"))
    await pool.until(lambda: bool(pool.finished(failed.id)), "the failure")
    assert pool.finished(failed.id) == [JobFinished(failed.id, "failed", SOURCE_GONE)]
    assert failed.id not in {item.job_id for item in items}


async def test_the_worker_dead_letters_a_source_that_is_not_the_jobs_and_runs_the_next(
    start_worker: StartWorker, bot: FakeBot, client: Redis  # noqa: F811
) -> None:
    await start_worker()
    source = png((1, 2, 3))
    params = GenerationParams(
        "1girl", "", 128, 128, 2, 5.0, (7,), "euler_a",
        source=SourceImage("images/x.png", hashlib.sha256(source).hexdigest(), 1, 0), strength=0.5,
    )

    def job(job_id: int) -> JobMessage:
        return JobMessage(
            job_id=job_id, attempt=1, token=new_token(), model="tiny-sdxl", params=WireParams.of(params),
            sent_at=time.time(),
        )

    inbox = Keys().inbox("w1")
    await client.xadd(inbox, {"job": job(1).to_json(), "source": png((9, 9, 9))})
    await client.xadd(inbox, dict(job(2).fields(source)))  # type: ignore[arg-type]
    result, pngs = await bot.result(2)
    assert result.outcome == "done" and len(pngs) == 1
    with Image.open(io.BytesIO(pngs[0])) as made:
        assert made.size == (128, 128)
    (letter,) = await bot.dead_letters()
    assert b"not the one the job names" in letter[b"reason"]

    async def only_the_dead_letter_left() -> bool:
        entries: Any = await client.xrange(inbox)
        return [JobMessage.from_json(fields[b"job"]).job_id for _, fields in entries] == [1]

    await eventually(only_the_dead_letter_left, "the done job's entry (and its image) deleted from the inbox")
