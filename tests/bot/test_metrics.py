"""The Prometheus endpoint over HTTP on 127.0.0.1: jobs run through the real service on the tiny model, and
the figures read back from /metrics as Prometheus reads them."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.cli import main
from bot.config import ConfigError, load_config
from bot.core.errors import StartError
from bot.core.jobs import JobState
from bot.discord_app.client import AnimeBot
from bot.metrics import Metrics, MetricsEndpoint, MetricsServer, start_metrics
from tests.bot.conftest import ServiceFactory, request

UNLIMITED = "[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    """GET /metrics as Prometheus does (blocking: the caller decides on which thread)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode("utf-8"))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_a_job_through_the_real_service_shows_on_the_endpoint(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED)
    endpoint = MetricsEndpoint(service, "127.0.0.1", 0)
    try:
        assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.server.port > 0
        await endpoint.feed.start()
        await endpoint.feed.idle()
        before = await asyncio.to_thread(scrape, endpoint.url)
        assert value(before, "animebot_queue_length") == 0
        assert value(before, "animebot_images_withheld_total") == 0  # exists before the rating check feeds it
        assert value(before, "animebot_jobs_total", outcome="done", model="tiny-sdxl") is None

        await service.set_paused(True)
        kept = await service.submit(request(count=2), "alice")
        dropped = await service.submit(request(), "bob")
        await endpoint.feed.idle()
        waiting = await asyncio.to_thread(scrape, endpoint.url)
        assert value(waiting, "animebot_queue_length") == 2
        assert value(waiting, "animebot_jobs_submitted_total", model="tiny-sdxl") == 2

        await service.cancel(dropped.id, "bob")
        await service.set_paused(False)
        assert (await asyncio.wait_for(service.wait(kept.id), 120)).state == JobState.DONE
        await endpoint.feed.idle()
        after = await asyncio.to_thread(scrape, endpoint.url)
    finally:
        await endpoint.close()

    finished = await service.job(kept.id)
    assert finished is not None and finished.started_at is not None and finished.finished_at is not None
    assert value(after, "animebot_queue_length") == 0
    assert value(after, "animebot_jobs_running") == 0
    assert value(after, "animebot_jobs_total", outcome="done", model="tiny-sdxl") == 1
    assert value(after, "animebot_jobs_total", outcome="cancelled", model="tiny-sdxl") == 1
    assert value(after, "animebot_images_total", model="tiny-sdxl") == 2
    # The histograms hold the recorded times of the job that ran (the cancelled one never started).
    assert value(after, "animebot_job_wait_seconds_count", model="tiny-sdxl") == 1
    assert value(after, "animebot_job_wait_seconds_sum", model="tiny-sdxl") == pytest.approx(
        finished.started_at - finished.created_at
    )
    assert value(after, "animebot_job_run_seconds_count", model="tiny-sdxl") == 1
    assert value(after, "animebot_job_run_seconds_sum", model="tiny-sdxl") == pytest.approx(
        finished.finished_at - finished.started_at
    )
    assert value(after, "animebot_job_run_seconds_bucket", model="tiny-sdxl", le="+Inf") == 1
    assert value(after, "animebot_images_withheld_total") == 0
    # On the CPU there is no GPU figure; the family is still declared.
    assert not [key for key in after if key[0] == "animebot_gpu_memory_bytes"]
    with pytest.raises(urllib.error.URLError):  # closed: nothing listens any more
        await asyncio.to_thread(scrape, endpoint.url)


async def test_a_failed_job_is_counted_by_outcome(make_service: ServiceFactory) -> None:
    service = await make_service(UNLIMITED + '[models.gone]\nfamily = "sdxl"\npath = "nowhere"\nsize_scale = 0.0625\n')
    endpoint = MetricsEndpoint(service, "127.0.0.1", 0)
    try:
        job = await service.submit(request(model="gone"), "alice")
        assert (await asyncio.wait_for(service.wait(job.id), 120)).state == JobState.FAILED
        await endpoint.feed.idle()
        samples = await asyncio.to_thread(scrape, endpoint.url)
    finally:
        await endpoint.close()
    assert value(samples, "animebot_jobs_total", outcome="failed", model="gone") == 1
    assert value(samples, "animebot_job_run_seconds_count", model="gone") is None  # only jobs that made images
    assert value(samples, "animebot_images_total", model="gone") is None


async def test_a_scrape_is_answered_while_the_event_loop_is_blocked(make_service: ServiceFactory) -> None:
    """The server runs on its own thread: a scrape made from the loop's own thread (which blocks the loop)
    is still answered."""
    service = await make_service(UNLIMITED)
    endpoint = MetricsEndpoint(service, "127.0.0.1", 0)
    try:
        samples = scrape(endpoint.url)  # deliberately on the loop's thread
        assert value(samples, "animebot_images_withheld_total") == 0
    finally:
        await endpoint.close()


class FakeCuda:
    """torch.cuda's memory functions for a machine without a GPU: fixed figures for one card."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def is_available(self) -> bool:
        return True

    def memory_allocated(self, device: Any = None) -> int:
        self.asked.append(device)
        return 3 * 1024**3

    def memory_reserved(self, device: Any = None) -> int:
        return 4 * 1024**3

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        return 6 * 1024**3, 12 * 1024**3


def test_gpu_memory_is_read_at_scrape_time_on_a_cuda_device() -> None:
    cuda = FakeCuda()
    device: list[str | None] = [None]
    metrics = Metrics(device=lambda: device[0], cuda=cuda)
    assert not [k for k in parse(generate_latest(metrics.registry).decode()) if k[0] == "animebot_gpu_memory_bytes"]
    device[0] = "cpu"
    assert not [k for k in parse(generate_latest(metrics.registry).decode()) if k[0] == "animebot_gpu_memory_bytes"]
    device[0] = "cuda:1"
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "animebot_gpu_memory_bytes", device="cuda:1", kind="allocated") == 3 * 1024**3
    assert value(samples, "animebot_gpu_memory_bytes", device="cuda:1", kind="reserved") == 4 * 1024**3
    assert value(samples, "animebot_gpu_memory_bytes", device="cuda:1", kind="free") == 6 * 1024**3
    assert value(samples, "animebot_gpu_memory_bytes", device="cuda:1", kind="total") == 12 * 1024**3
    assert cuda.asked == ["cuda:1"]


def test_two_sets_of_metrics_in_one_process_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.images.labels("a").inc(3)
    assert value(parse(generate_latest(second.registry).decode()), "animebot_images_total", model="a") is None
    assert value(parse(generate_latest(first.registry).decode()), "animebot_images_total", model="a") == 3


def test_a_taken_port_is_a_one_line_start_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartError, match=rf"^\[metrics\] cannot listen on 127.0.0.1:{port}: "):
            MetricsServer.start(Metrics(), "127.0.0.1", port)


def test_metrics_settings(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("", encoding="utf-8")
    config = load_config(path)
    assert (config.metrics.port, config.metrics.host) == (0, "127.0.0.1")
    assert start_metrics(None, config.metrics) is None  # type: ignore[arg-type]  # off: nothing is touched
    path.write_text('[metrics]\nport = 9464\nhost = "0.0.0.0"\n', encoding="utf-8")
    assert (load_config(path).metrics.port, load_config(path).metrics.host) == (9464, "0.0.0.0")
    for bad in ("port = 70000", "port = -1", 'port = "9464"', "portt = 1"):
        path.write_text(f"[metrics]\n{bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="metrics"):
            load_config(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_animebot_run_serves_metrics_while_the_bot_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`animebot run` with [metrics] port: the endpoint answers while the bot runs, and is closed after."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "data"\n[metrics]\nport = {port}\n', encoding="utf-8")
    seen: list[Samples] = []

    def fake_run(self: AnimeBot, token: str, **kw: Any) -> None:
        seen.append(scrape(f"http://127.0.0.1:{port}/metrics"))

    monkeypatch.setattr(AnimeBot, "run", fake_run)
    monkeypatch.setenv("DISCORD_TOKEN", "x")
    assert main(["run", "--config", str(config)]) == 0
    assert value(seen[0], "animebot_images_withheld_total") == 0
    with pytest.raises(urllib.error.URLError):
        scrape(f"http://127.0.0.1:{port}/metrics")


def test_animebot_run_with_a_taken_port_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f'data_dir = "data"\n[metrics]\nport = {port}\n', encoding="utf-8")
        monkeypatch.setattr(AnimeBot, "run", lambda self, token, **kw: pytest.fail("ran"))
        monkeypatch.setenv("DISCORD_TOKEN", "x")
        assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == f"animebot: error: [metrics] cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_job_submitted_reaches_listeners_not_a_job_s_followers() -> None:
    """The metrics hear every submission; GenerationService.watch (a job's followers) never sees it."""
    from bot.core.events import EventBus, JobSubmitted

    bus = EventBus()
    heard: list[object] = []
    bus.listen(heard.append)
    inbox = bus.follow(7)
    bus.publish(JobSubmitted(7, "tiny-sdxl"))
    assert heard == [JobSubmitted(7, "tiny-sdxl")] and inbox.empty()


async def test_the_gpu_gauge_follows_the_service_device(make_service: ServiceFactory) -> None:
    """The endpoint's GPU gauge asks the started service's worker for its device (the CPU here: no sample);
    with CUDA's figures it reports them for that device."""
    service = await make_service(UNLIMITED)
    cuda = FakeCuda()
    endpoint = MetricsEndpoint(service, "127.0.0.1", 0, cuda=cuda)
    try:
        samples = await asyncio.to_thread(scrape, endpoint.url)
        assert not [key for key in samples if key[0] == "animebot_gpu_memory_bytes"] and cuda.asked == []
        service.worker.cache.runtime = dataclasses.replace(service.worker.cache.runtime, device="cuda:0")
        samples = await asyncio.to_thread(scrape, endpoint.url)
        assert value(samples, "animebot_gpu_memory_bytes", device="cuda:0", kind="total") == 12 * 1024**3
    finally:
        await endpoint.close()


async def test_withheld_images_are_counted_once_from_the_event(make_service: ServiceFactory) -> None:
    """service.withhold (the rating check's record) publishes ImagesWithheld; the feed counts its images, once
    per job however often the delivery tries to tell the owner; the job's followers never get the event."""
    service = await make_service(UNLIMITED)
    endpoint = MetricsEndpoint(service, "127.0.0.1", 0)
    try:
        job = await service.submit(request(count=2), "alice")
        assert (await asyncio.wait_for(service.wait(job.id), 120)).state == JobState.DONE
        follower = service.events.follow(job.id)
        await service.withhold(job.id, "explicit", 2)
        await service.withhold(job.id, "explicit", 2)
        await endpoint.feed.idle()
        samples = await asyncio.to_thread(scrape, endpoint.url)
        assert follower.empty()
        service.events.unfollow(job.id, follower)
    finally:
        await endpoint.close()
    assert value(samples, "animebot_images_withheld_total") == 2
    withheld = await service.job(job.id)
    assert withheld is not None and withheld.withheld == "explicit"
