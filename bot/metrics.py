"""The Prometheus endpoint: figures of the queue and the worker, fed from the service's events.

`Metrics` holds the metrics in a registry of its own (never prometheus_client's global one, so two services
in one process, or tests, do not collide). `MetricsFeed` listens on the service's EventBus: each event is
put in a queue (the listener never waits) and one task reads the job it concerns from the store, so the wait
and run times are the recorded ones (`created_at` → `started_at` → `finished_at`), whichever process ran the
job. `MetricsServer` serves /metrics from prometheus_client's HTTP server thread: a scrape never touches the
event loop. GPU memory is read from torch.cuda at scrape time, when the service runs on a CUDA device.

    animebot_queue_length                    gauge      jobs waiting
    animebot_jobs_running                    gauge      jobs a worker runs now
    animebot_jobs_submitted_total{model}     counter    jobs queued
    animebot_job_wait_seconds{model}         histogram  submitted → started
    animebot_job_run_seconds{model}          histogram  started → done
    animebot_jobs_total{outcome,model}       counter    finished jobs: done | failed | cancelled
    animebot_images_total{model}             counter    images made
    animebot_images_withheld_total           counter    result images not posted (the rating check)
    animebot_gpu_memory_bytes{device,kind}   gauge      allocated | reserved | free | total (CUDA only)
    animebot_workers_online                  gauge      workers serving the queue (local mode: 1; redis mode:
                                                        those whose heartbeat is alive, 0 while Redis is down)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.config import MetricsSettings
from bot.core.errors import StartError
from bot.core.events import Event, ImagesWithheld, JobFinished, JobStarted, JobSubmitted
from bot.core.jobs import JobState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from bot.core.service import GenerationService

log = logging.getLogger(__name__)

WAIT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
RUN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
Recorded = JobSubmitted | JobStarted | JobFinished  # the events the figures come from
REFRESH_SECONDS = 10.0  # the queue gauges are also read this often (jobs another process queued or claimed)


class CudaMemory(Protocol):
    """What the GPU gauge reads: torch.cuda's memory functions."""

    def is_available(self) -> bool: ...
    def memory_allocated(self, device: Any = None) -> int: ...
    def memory_reserved(self, device: Any = None) -> int: ...
    def mem_get_info(self, device: Any = None) -> tuple[int, int]: ...


class GpuMemoryCollector(Collector):
    """animebot_gpu_memory_bytes at scrape time, for the CUDA device `device()` names (no sample on the CPU,
    MPS, or before the service has a device). torch is never imported here: only read if already loaded."""

    def __init__(self, device: Callable[[], str | None], cuda: CudaMemory | None = None) -> None:
        self._device = device
        self._cuda = cuda

    def _cuda_module(self) -> CudaMemory | None:
        if self._cuda is not None:
            return self._cuda
        torch = sys.modules.get("torch")
        return None if torch is None else torch.cuda

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "animebot_gpu_memory_bytes", "GPU memory: held by this process's tensors (allocated), by its "
            "allocator (reserved), free on the card and its total", labels=["device", "kind"]
        )
        device = self._device()
        cuda = self._cuda_module()
        if device is not None and device.startswith("cuda") and cuda is not None and cuda.is_available():
            try:
                free, total = cuda.mem_get_info(device)
                figures = {
                    "allocated": cuda.memory_allocated(device),
                    "reserved": cuda.memory_reserved(device),
                    "free": free,
                    "total": total,
                }
            except Exception:  # a lost device must not break the scrape of every other figure
                log.exception("reading the GPU memory of %s failed", device)
            else:
                for kind, value in figures.items():
                    family.add_metric([device, kind], float(value))
        yield family


class Metrics:
    """The bot's metrics, in their own registry."""

    def __init__(
        self,
        device: Callable[[], str | None] = lambda: None,
        cuda: CudaMemory | None = None,
        workers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_length = Gauge("animebot_queue_length", "Jobs waiting in the queue", registry=r)
        self.running = Gauge("animebot_jobs_running", "Jobs a worker is running now", registry=r)
        self.submitted = Counter("animebot_jobs_submitted", "Jobs queued", ["model"], registry=r)
        self.wait_seconds = Histogram(
            "animebot_job_wait_seconds", "Time from submission to start", ["model"], buckets=WAIT_BUCKETS, registry=r
        )
        self.run_seconds = Histogram(
            "animebot_job_run_seconds", "Time from start to done (jobs that made images)", ["model"],
            buckets=RUN_BUCKETS, registry=r,
        )
        self.jobs = Counter("animebot_jobs", "Finished jobs by outcome and model", ["outcome", "model"], registry=r)
        self.images = Counter("animebot_images", "Images made", ["model"], registry=r)
        # Incremented by the rating check (result images above the channel's allowance, not posted).
        self.images_withheld = Counter("animebot_images_withheld", "Result images withheld from posting", registry=r)
        r.register(GpuMemoryCollector(device, cuda))
        self.workers_online = Gauge("animebot_workers_online", "Workers serving the queue now", registry=r)
        self.workers_online.set_function(lambda: float(workers()))  # read at scrape time


class MetricsFeed:
    """Keeps `metrics` up to date from the service's events. The listener only queues the event (it runs in
    the publisher's call); one task reads what the figures need from the store, in event order."""

    def __init__(self, service: GenerationService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics
        self._pending: collections.deque[Recorded] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._unlisten = service.events.listen(self._on_event)

    async def start(self) -> None:
        """Start recording on the running loop, and read the queue gauges now. The first event starts it too
        (listeners are called on the loop), so calling it is only needed for the gauges to be right before."""
        self._wake()

    def _wake(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-feed")
        assert self._wakeup is not None
        self._wakeup.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ImagesWithheld):  # nothing to read from the store
            self.metrics.images_withheld.inc(event.count)
            return
        if isinstance(event, JobSubmitted | JobStarted | JobFinished):
            self._pending.append(event)
            self._wake()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), REFRESH_SECONDS)
            self._wakeup.clear()
            self._busy = True
            try:
                while self._pending:
                    event = self._pending.popleft()
                    try:
                        await self._record(event)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # the store is busy or closing: this figure is lost, not the feed
                        log.exception("metrics: recording %r failed", event)
                try:
                    await self._refresh_queue()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("metrics: reading the queue's length failed", exc_info=True)
            finally:
                self._busy = False

    async def _record(self, event: Recorded) -> None:
        m = self.metrics
        if isinstance(event, JobSubmitted):
            m.submitted.labels(event.model).inc()
            return
        job = await self.service.job(event.job_id)
        if job is None:
            return
        if isinstance(event, JobStarted):
            if job.started_at is not None:
                m.wait_seconds.labels(job.model).observe(max(0.0, job.started_at - job.created_at))
            return
        assert isinstance(event, JobFinished)
        m.jobs.labels(event.state, job.model).inc()
        if event.state == JobState.DONE.value:
            if job.started_at is not None and job.finished_at is not None:
                m.run_seconds.labels(job.model).observe(max(0.0, job.finished_at - job.started_at))
            m.images.labels(job.model).inc(len(await self.service.images(job.id)))

    async def _refresh_queue(self) -> None:
        self.metrics.queue_length.set(await self.service.queue_length())
        self.metrics.running.set(len(await self.service.running_jobs()))

    async def idle(self) -> None:
        """Wait until every event heard so far is recorded (for tests and an orderly shutdown)."""
        while self._pending or self._busy or (self._wakeup is not None and self._wakeup.is_set()):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self._unlisten()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class MetricsServer:
    """prometheus_client's HTTP server on its own thread (a scrape never waits for the event loop)."""

    def __init__(self, server: WSGIServer, thread: Any) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(cls, metrics: Metrics, host: str, port: int) -> MetricsServer:
        """Listen on host:port now (port 0: a free one). StartError with a one-line reason if it cannot."""
        try:
            server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as e:
            raise StartError(f"[metrics] cannot listen on {host}:{port}: {e.strerror or e}") from None
        return cls(server, thread)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def host(self) -> str:
        host = str(self._server.server_address[0])
        return f"[{host}]" if ":" in host else host

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class MetricsEndpoint:
    """What `animebot run` starts when [metrics] port is set: the metrics, their feed and the server, which
    listens from construction on (port 0: a free one). Raises StartError if it cannot."""

    def __init__(self, service: GenerationService, host: str, port: int, cuda: CudaMemory | None = None) -> None:
        self.metrics = Metrics(
            device=lambda: _service_device(service), cuda=cuda, workers=lambda: _workers_online(service)
        )
        self.server = MetricsServer.start(self.metrics, host, port)
        self.feed = MetricsFeed(service, self.metrics)

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}/metrics"

    async def close(self) -> None:
        await self.feed.close()
        await asyncio.to_thread(self.server.stop)


def _service_device(service: GenerationService) -> str | None:
    """The device of the worker in this process (local mode), from the executor's status; None before the
    service started, and in redis mode (the workers' GPUs are in other processes)."""
    try:
        status = service.executor_status()
    except AssertionError:  # not started
        return None
    return next((w.device for w in status.workers if w.local), None)


def _workers_online(service: GenerationService) -> int:
    try:
        status = service.executor_status()
    except AssertionError:  # not started
        return 0
    return len(status.workers) if status.online else 0


def start_metrics(service: GenerationService, settings: MetricsSettings) -> MetricsEndpoint | None:
    """The endpoint, listening now; None when [metrics] port is 0 (off). Raises StartError."""
    return None if settings.port == 0 else MetricsEndpoint(service, settings.host, settings.port)
