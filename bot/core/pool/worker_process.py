"""`animebot worker`: one GPU worker serving a bot through Redis ([workers] mode = "redis"; docs/scaling.md).

The process runs one GpuWorker (the same backends, model cache and memory logic as the bot's local worker) whose
JobSource is a RedisJobSource. It needs no Discord token, opens no SQLite database and takes no lock on the data
directory: it may run on the bot's host with the bot's config file. torch is imported only inside run_worker
(bot/core imports no torch at module level)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config, WorkersSettings
from bot.core.collector import CollectorPolicy
from bot.core.pool.connection import UNREACHABLE, connect, describe_url
from bot.core.pool.protocol import ProtocolError, check_id
from bot.core.pool.source import DeviceState, RedisJobSource, WorkerIdInUse
from inference.specs import ModelSpec

if TYPE_CHECKING:
    from inference.cache import ModelCache

log = logging.getLogger(__name__)

# The worker's retries of Redis (a result to send, the next job to read) pause at most this long, so a worker
# picks up within seconds once Redis is back (the local worker's default is 30 s, for a locked database).
RETRY = (0.25, 5.0)


class WorkerSetupError(ValueError):
    """The worker cannot start as asked (an unknown model, a malformed device or id); the message is one line."""


def served_models(config: Config, names: Sequence[str] | None) -> dict[str, ModelSpec]:
    """The models this worker serves: `names` (each must be configured), or every configured model."""
    if not names:
        return dict(config.models)
    unknown = [name for name in names if name not in config.models]
    if unknown:
        raise WorkerSetupError(
            f"unknown model(s) {', '.join(map(repr, unknown))} in --models (have: {', '.join(config.models)})"
        )
    return {name: config.models[name] for name in dict.fromkeys(names)}


def parse_models(text: str | None) -> list[str] | None:
    """`a,b` → ["a", "b"]; None or only commas → None (every model)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


def check_device(device: str) -> str:
    """`device` if it names one the config could ([inference] device), else WorkerSetupError."""
    if device in ("auto", "cuda", "mps", "cpu") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise WorkerSetupError(f"--device must be auto, cuda, cuda:N, mps or cpu (got {device!r})")


def default_worker_id(device: str | None) -> str:
    """HOST:DEVICE when a device is given (one worker per GPU: stable across restarts, so a restarted worker reads
    its own unfinished jobs again), else HOST:PID."""
    return f"{socket.gethostname()}:{device if device is not None else os.getpid()}"


def worker_id_for(worker_id: str | None, device: str | None) -> str:
    name = worker_id or default_worker_id(device)
    try:
        return check_id(name)
    except ProtocolError:
        raise WorkerSetupError(
            f"invalid worker id {name!r}: letters, digits and ._:@- only, at most 100 (pass one with --id)"
        ) from None


def _load_inference() -> None:
    """Import the GPU side (torch, diffusers: seconds) and quiet its libraries' output; on a thread."""
    import inference.worker  # noqa: F401  (cached in sys.modules for the imports that follow)
    from inference.quiet import silence_library_output

    silence_library_output()


def _device_state(cache: ModelCache) -> DeviceState:
    """The heartbeat's view of the device (on a thread: asking CUDA may take a moment)."""
    from inference.device import device_budget, device_free

    runtime = cache.runtime
    try:
        names = cache.names()  # most recently used last
    except RuntimeError:  # changed by the GPU thread while read: the next heartbeat has it
        names = []
    active = cache.active
    loaded = ([active] if active in names else []) + [name for name in reversed(names) if name != active]
    cuda = runtime.device.startswith("cuda")
    return DeviceState(
        device=runtime.device,
        loaded=tuple(loaded),
        budget=device_budget(runtime) if cuda else None,
        free=device_free(runtime) if cuda else None,
    )


def _spool_dir(config: Config, worker_id: str) -> Path:
    """Where the GpuWorker writes a job's PNGs before they are sent: the data directory's worker-spool/{id}, or
    a temporary folder when the data directory cannot be written (a worker on another host)."""
    folder = config.data_dir / "worker-spool" / worker_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return folder
    except OSError as e:
        fallback = Path(tempfile.mkdtemp(prefix="animebot-worker-spool-"))
        log.warning("worker %s: cannot write in %s (%s); spooling images in %s", worker_id, folder, e, fallback)
        return fallback


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until one of `waits` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_worker(
    config: Config,
    *,
    device: str | None,
    models: list[str] | None,
    worker_id: str | None,
    stop: asyncio.Event,
    settings: WorkersSettings | None = None,
    cache: ModelCache | None = None,
) -> None:
    """Serve jobs from Redis until `stop` is set, then stop cleanly: the running job is interrupted between two
    steps (its inbox entry stays pending), finished ones are sent, the heartbeat key is deleted. Raises
    WorkerSetupError before anything starts when the models, device or id cannot be used (also when another live
    worker has the id), and after stopping cleanly when another worker took the id meanwhile. `cache` (tests,
    benchmarks) replaces the model cache built from the config."""
    settings = settings or config.workers
    served = served_models(config, models)
    if device is not None:
        check_device(device)
    name = worker_id_for(worker_id, device)
    client = connect(settings.url)
    try:
        await asyncio.to_thread(_load_inference)
        from inference.cache import ModelCache
        from inference.device import make_runtime
        from inference.loras import LoraLookup
        from inference.worker import GpuWorker

        if cache is None:
            inf = config.inference
            try:
                runtime = make_runtime(
                    device or inf.device, inf.dtype, config.cache_dir, inf.local_files_only, config.vram_limit
                )
            except ValueError as e:
                raise WorkerSetupError(str(e)) from None
            cache = ModelCache(runtime, inf.cache_size, inf.cache_location)
        held = cache
        spool = await asyncio.to_thread(_spool_dir, config, name)
        source = RedisJobSource(client, settings, name, served, spool, state=lambda: _device_state(held))
        worker = GpuWorker(source, cache, retry=RETRY, loras=LoraLookup(config.loras_dir, config.lora_hash_cache))
        source.cancel_job = worker.cancel
        # The same garbage-collector policy as the bot's (bot/core/collector.py): a full collection walking a
        # model's objects stalls this loop's heartbeat and inbox reads as it would the bot's Discord traffic.
        collector = CollectorPolicy()
        worker.on_model_loaded = collector.model_loaded
        log.info(
            "worker %s: device %s, models %s, Redis %s (prefix %s, visibility timeout %gs)",
            name, cache.runtime.device, ", ".join(served), describe_url(settings.url), settings.prefix,
            settings.visibility_timeout,
        )
        try:
            await source.beat()  # the id is free (or ours to take over) before any job is read
        except WorkerIdInUse as e:
            raise WorkerSetupError(str(e)) from None
        except UNREACHABLE as e:  # Redis not up yet: the heartbeat task retries, and checks the id then
            log.warning("worker %s: Redis cannot be reached (%s); trying again", name, type(e).__name__)
        collector.startup()  # once it is sure to run (release() below undoes it)
        await source.start()
        try:
            worker.start()
            await _first(stop.wait(), source.id_taken.wait())
            log.info("worker %s: stopping", name)
        finally:
            source.stop_reading()
            await worker.stop()
            await source.stop()
            collector.release()
        if source.id_taken.is_set():
            raise WorkerSetupError(source.id_taken_by)
        log.info("worker %s: stopped", name)
    finally:
        await client.aclose()
