"""Quotas through the real service: atomic checks, limits, overrides, refunds, status."""

from __future__ import annotations

import asyncio

import pytest

from bot.core.errors import UserError
from bot.core.jobs import JobState
from bot.core.quotas import WINDOW_SECONDS
from tests.bot.conftest import ServiceFactory, request


async def test_100_concurrent_submissions_with_a_limit_of_5_accept_exactly_5(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 5\nmax_queued_jobs = 0\n")
    await service.set_paused(True)  # nothing runs: only the accounting is under test
    results = await asyncio.gather(
        *(service.submit(request(), "discord:1") for _ in range(100)), return_exceptions=True
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(accepted) == 5
    assert all(isinstance(r, UserError) and r.key == "quota_daily" for r in refused)
    assert await service.store.scalar("SELECT COUNT(*) FROM jobs") == 5
    assert await service.store.scalar("SELECT SUM(images) FROM usage") == 5
    assert await service.queue_length() == 5


async def test_max_queued_jobs_and_cooldown(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 0\nmax_queued_jobs = 2\ncooldown_seconds = 0\n")
    await service.set_paused(True)
    await service.submit(request(), "u")
    await service.submit(request(), "u")
    with pytest.raises(UserError) as err:
        await service.submit(request(), "u")
    assert err.value.key == "quota_queued"
    await service.submit(request(), "someone else")  # limits are per user

    cooled = await make_service("[quotas]\ncooldown_seconds = 60\n", data="cooldown")
    await cooled.queue.set_paused(True)
    await cooled.submit(request(), "u")
    with pytest.raises(UserError) as err:
        await cooled.submit(request(), "u")
    assert err.value.key == "quota_cooldown"
    assert "Please wait" in str(err.value)


async def test_overrides_user_beats_role_and_roles_take_the_most_generous(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 2\nmax_queued_jobs = 0\n")
    quotas = service.quotas
    await quotas.set_override("role", "artists", 10, None, None, "admin")
    await quotas.set_override("role", "vip", 0, None, None, "admin")  # 0 = unlimited
    await quotas.set_override("user", "u1", 3, None, None, "admin")
    assert (await quotas.limits_for("u2")).images_per_day == 2
    assert (await quotas.limits_for("u2", ["artists"])).images_per_day == 10
    assert (await quotas.limits_for("u2", ["artists", "vip"])).images_per_day is None
    assert (await quotas.limits_for("u1", ["vip"])).images_per_day == 3
    assert await quotas.clear_override("user", "u1")
    assert (await quotas.limits_for("u1")).images_per_day == 2


async def test_status_remaining_and_reset_time(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 3\nmax_queued_jobs = 0\n")
    now = [1_000_000.0]
    service.quotas.clock = lambda: now[0]
    await service.set_paused(True)
    await service.submit(request(count=2), "u")
    now[0] += 600
    await service.submit(request(count=1), "u")
    status = await service.quota("u")
    assert (status.used, status.remaining, status.queued) == (3, 0, 2)
    # The first two images leave the window 24 h after they were asked for.
    assert status.resets_at == 1_000_000.0 + WINDOW_SECONDS
    with pytest.raises(UserError) as err:
        await service.submit(request(), "u")
    assert err.value.key == "quota_daily" and "23h 50m" in str(err.value)
    now[0] = 1_000_000.0 + WINDOW_SECONDS + 1
    assert (await service.quota("u")).remaining == 2


async def test_cancelled_and_failed_jobs_give_their_images_back(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 2\nmax_queued_jobs = 0\n")
    await service.set_paused(True)
    job = await service.submit(request(count=2), "u")
    assert (await service.quota("u")).remaining == 0
    cancelled = await service.cancel(job.id, "u")
    assert cancelled.state == JobState.CANCELLED
    assert (await service.quota("u")).remaining == 2
    job = await service.submit(request(count=1), "u")
    await service.queue.on_failed(job.id, "broken")
    assert (await service.quota("u")).remaining == 2


async def test_rerolls_count_as_generations(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 2\nmax_queued_jobs = 0\n")
    job = await service.submit(request(seed=5), "u")
    done = await service.wait(job.id)
    assert done.state == JobState.DONE
    reroll = await service.reroll(job.id, "u")
    assert reroll.reroll_of == job.id and reroll.params.seeds != (5,)
    assert reroll.params.prompt == job.params.prompt and reroll.model == job.model
    with pytest.raises(UserError):
        await service.reroll(job.id, "u")
    assert (await service.quota("u")).used == 2


async def test_admin_quota_override_is_audited(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 1\nmax_queued_jobs = 0\n")
    await service.set_paused(True)
    await service.set_quota("user", "u", "admin", images_per_day=3, guild_id="g")
    for _ in range(3):
        await service.submit(request(), "u")
    status = await service.quota("u")
    assert (status.limits.images_per_day, status.remaining) == (3, 0)
    row = await service.store.fetchone("SELECT actor_id, guild_id, action, detail FROM audit_log")
    assert row is not None and (row["actor_id"], row["guild_id"], row["action"]) == ("admin", "g", "quota.set")
    assert '"images_per_day": 3' in row["detail"]
