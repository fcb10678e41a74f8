"""The pre-flight check in GenerationService.submit: a job that cannot run in any memory mode on this device
is refused (UserError job_too_large) before it is queued or counted, on every path that submits (a reroll
too); a job that fits is queued as before."""

from __future__ import annotations

import pytest

from bot.core.errors import UserError
from tests.bot.conftest import ServiceFactory, request

# The tiny SDXL at 1/4 scale: sizes up to 512x512. By inference.memory's arithmetic a 256x256 job needs 0.29
# GiB in high mode, a 512x512 one about 1.05 GiB in its cheapest mode.
MODEL = '[models.big]\nbuiltin = "tiny-sdxl"\nsize_scale = 0.25\n'
QUOTAS = "[quotas]\nimages_per_day = 10\nmax_queued_jobs = 0\n"


def config(limit: float) -> str:
    return f"[inference]\nvram_limit_gb = {limit}\n{QUOTAS}{MODEL}"


async def test_an_impossible_job_is_refused_before_the_queue_and_the_quota(make_service: ServiceFactory) -> None:
    service = await make_service(config(0.3))
    with pytest.raises(UserError) as refused:
        await service.submit(request(model="big", size="512x512", count=8), "user:a")
    error = refused.value
    assert error.key == "job_too_large"
    assert error.params == {"model": "big", "width": 512, "height": 512, "needed": "1.0 GiB", "usable": "0.3 GiB"}
    assert await service.store.scalar("SELECT COUNT(*) FROM jobs") == 0
    assert (await service.quota("user:a")).used == 0

    job = await service.submit(request(model="big", size="256x256", steps=1), "user:a")  # fits in high mode
    assert (await service.wait(job.id)).state == "done"
    assert (await service.quota("user:a")).used == 1


async def test_no_limit_on_the_cpu_refuses_nothing(make_service: ServiceFactory) -> None:
    service = await make_service(config(0))
    job = await service.submit(request(model="big", size="512x512", steps=1), "user:a")
    assert (await service.wait(job.id)).state == "done"


async def test_a_reroll_after_the_limit_was_lowered_is_refused(make_service: ServiceFactory) -> None:
    """An admin lowers vram_limit_gb and restarts: rerolling an older large job is refused like a new one."""
    first = await make_service(config(0))
    job = await first.submit(request(model="big", size="512x512", steps=1), "user:a")
    assert (await first.wait(job.id)).state == "done"
    await first.close()

    service = await make_service(config(0.3))
    with pytest.raises(UserError) as refused:
        await service.reroll(job.id, "user:a")
    assert refused.value.key == "job_too_large"
    assert await service.store.scalar("SELECT COUNT(*) FROM jobs") == 1
    assert (await service.quota("user:a")).used == 1  # the first job only


async def test_a_hires_job_is_checked_at_the_size_it_comes_out_at(make_service: ServiceFactory) -> None:
    """The hires fix's refine pass (output_size()) is the job's largest: a 256x256 job that fits is refused with
    a x2 hires fix, whose 512x512 images do not, and the refusal names the output size."""
    from dataclasses import replace

    from bot.prompts.requests import resolve_request
    from inference.types import HiresFix

    service = await make_service(config(0.3))
    banned = service.config.discord.banned_words
    plain = resolve_request(request(model="big", size="256x256", count=8), service.config.models, service.tags, banned)
    service._check_fits(plain)  # fits
    hires = replace(plain, params=replace(plain.params, hires=HiresFix(2.0, 0.5)))
    with pytest.raises(UserError) as refused:
        service._check_fits(hires)
    assert refused.value.key == "job_too_large"
    assert (refused.value.params["width"], refused.value.params["height"]) == (512, 512)
