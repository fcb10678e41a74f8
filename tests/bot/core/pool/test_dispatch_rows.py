"""The queue repository's part of the pool (bot/core/jobs.py): claims restricted to models and carrying a dispatch
token, the dispatch read back, results recorded only on the dispatch they name, and the failover's requeue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.core.jobs import GAVE_UP_WORKER, MAX_ATTEMPTS, Dispatch, JobOrigin, JobRepository, JobState
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, resolve_request

TOKEN_A = "a" * 32
TOKEN_B = "b" * 32


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[JobRepository]:
    store = await Store.open(tmp_path / "rows.sqlite")
    yield JobRepository(store)
    await store.close()


async def submit(jobs: JobRepository, tmp_path: Path, owner: str, model: str = "tiny-sdxl") -> int:
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path)
    request = GenerationRequest(model, PromptChoices("1girl"), seed=1, steps=1, size="64x64")
    async with jobs.store.transaction():
        await jobs.ensure_user(owner)
        return await jobs.insert(resolve_request(request, config.models, None), JobOrigin(owner))


async def test_claims_among_models_carry_the_token(jobs: JobRepository, tmp_path: Path) -> None:
    sdxl = await submit(jobs, tmp_path, "alice")
    anima = await submit(jobs, tmp_path, "bob", "tiny-anima")
    assert await jobs.next_waiting_model({"tiny-anima"}) == "tiny-anima"
    assert await jobs.next_waiting_model({"tiny-sdxl", "tiny-anima"}) == "tiny-sdxl"
    assert await jobs.next_waiting_model({"other"}) is None
    assert await jobs.claim_next("w1", models=("other",), token=TOKEN_A) is None
    claimed = await jobs.claim_next("w1", models=("tiny-anima",), token=TOKEN_A)
    assert claimed is not None and claimed.id == anima
    assert await jobs.dispatch(anima) == Dispatch(anima, "w1", TOKEN_A, 1, None)
    assert await jobs.dispatch(sdxl) is None  # not running
    assert await jobs.dispatches() == [Dispatch(anima, "w1", TOKEN_A, 1, None)]


async def test_results_count_only_on_their_dispatch(jobs: JobRepository, tmp_path: Path) -> None:
    job = await submit(jobs, tmp_path, "alice")
    await jobs.claim_next("w1", token=TOKEN_A)
    assert not await jobs.finish(job, [], TOKEN_B)
    assert not await jobs.fail(job, "no", TOKEN_B)
    assert not await jobs.cancel(job, "alice", TOKEN_B)
    assert (await jobs.get(job)).state == JobState.RUNNING  # type: ignore[union-attr]
    assert await jobs.fail(job, "out of memory", TOKEN_A)
    assert not await jobs.fail(job, "again", TOKEN_A)


async def test_requeue_only_the_dispatch_named(jobs: JobRepository, tmp_path: Path) -> None:
    job = await submit(jobs, tmp_path, "alice")
    await jobs.claim_next("w1", token=TOKEN_A)
    stale = Dispatch(job, "w1", TOKEN_B, 1, None)  # an older dispatch of it: nothing happens
    assert (await jobs.requeue([stale])).requeued == []
    assert (await jobs.get(job)).state == JobState.RUNNING  # type: ignore[union-attr]
    outcome = await jobs.requeue([Dispatch(job, "w1", TOKEN_A, 1, None)], attempt_counts=False)
    assert outcome.requeued == [job]
    requeued = await jobs.get(job)
    assert requeued is not None and requeued.state == JobState.QUEUED and requeued.attempts == 0
    assert await jobs.order() == [job]


async def test_requeue_gives_up_after_max_attempts_and_honours_cancels(jobs: JobRepository, tmp_path: Path) -> None:
    doomed = await submit(jobs, tmp_path, "alice")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claimed = await jobs.claim_next(f"w{attempt}", token=TOKEN_A)
        assert claimed is not None and claimed.attempts == attempt
        outcome = await jobs.requeue([Dispatch(doomed, f"w{attempt}", TOKEN_A, attempt, None)])
    assert outcome.failed == [doomed]
    assert (await jobs.get(doomed)).error == GAVE_UP_WORKER  # type: ignore[union-attr]
    cancelled = await submit(jobs, tmp_path, "bob")
    await jobs.claim_next("w9", token=TOKEN_B)
    await jobs.request_cancel(cancelled, "bob")
    assert (await jobs.requeue([Dispatch(cancelled, "w9", TOKEN_B, 1, "bob")])).cancelled == [cancelled]
    assert (await jobs.get(cancelled)).state == JobState.CANCELLED  # type: ignore[union-attr]
