"""Faults made for real, driven the way users meet them: another process holding the database's write
lock while a job finishes, a full disk (a small tmpfs where this machine allows mounting one, an
injected ENOSPC otherwise), a damaged database, a read-only data directory, a tag database that is not
one, and a second process on the same data directory. Each gives a clear one-line message; the worker
stays alive; nothing is lost or run twice; a process that cannot start exits instead of hanging.

Real processes run `python -m bot ...` (the CLI users run) or this module as a child
(`python -m tests.bot.core.test_faults hold CONFIG`: a bot process with one job running).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.cli import main
from bot.config import load_config
from bot.core.errors import StartError
from bot.core.events import JobFinished, JobStarted
from bot.core.jobs import JobState
from bot.core.lock import LockHeld, ProcessLock
from bot.core.service import GenerationService
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from inference.backends.base import Backend
from inference.cache import ModelCache
from inference.memory import Footprint, reference_footprint
from inference.specs import MemoryMode, ModelSpec, RuntimeOptions
from inference.types import CancelToken, GenerationParams, LoadProgressCallback, LoraFile, ProgressCallback
from inference.worker import GpuWorker
from tests.bot.core.faults import REPO, DatabaseLocker, every_event, read_only, tmpfs

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX processes and signals")

TIMEOUT = 240.0  # seconds a child process may take (torch's import alone takes seconds on a busy machine)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def animebot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process. A hang (the bug this guards against) fails at TIMEOUT."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args, "--config", str(config)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The process failed (exit `code`: 1 for what it met at run time, 2 for a config the CLI refuses)
    with exactly one line on stderr, `animebot: error: ...`, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("animebot: error: "), result.stderr
    return lines[0]


def read_jobs(db: Path) -> list[tuple[int, str, int, str | None]]:
    connection = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return [tuple(row) for row in connection.execute("SELECT id, state, attempts, error FROM jobs ORDER BY id")]
    finally:
        connection.close()


def write_config(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"data_dir = '{data_dir}'\n\n[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n", encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path, data_dir: Path) -> Path:
    return write_config(tmp_path, data_dir)


def make_database(config: Path) -> None:
    """A migrated database with a user in it, as a bot that ran once leaves it."""

    async def make() -> None:
        store = await Store.open(load_config(config).database)
        try:
            await store.execute("INSERT INTO users (id, created_at) VALUES ('cli:a', 0)")
        finally:
            await store.close()

    asyncio.run(make())


# -- a process that cannot start says why in one line, and exits ---------------------------------------


def test_a_tag_database_that_is_not_one_stops_the_start_with_one_line(config: Path, data_dir: Path) -> None:
    (data_dir / "tags.sqlite").write_bytes(b"not a database at all" * 100)
    line = one_line_error(animebot(config, "generate", "1girl", "--steps", "1", "--size", "64x64"))
    assert "tags.sqlite" in line and "not a SQLite database" in line


def test_a_database_locked_past_the_busy_timeout_stops_the_start_with_one_line(config: Path, data_dir: Path) -> None:
    make_database(config)
    with DatabaseLocker(data_dir / "animebot.sqlite") as locker:
        result = animebot(config, "work")
        locker.release()
    line = one_line_error(result)
    assert "animebot.sqlite" in line and "locked by another program" in line
    assert "job(s) waiting" not in result.stdout + result.stderr


def test_a_damaged_database_is_named_damaged_not_empty(config: Path, data_dir: Path) -> None:
    make_database(config)
    db = data_dir / "animebot.sqlite"
    with sqlite3.connect(db) as raw:  # make it big enough to damage a page in the middle
        raw.execute("CREATE TABLE ballast (x)")
        raw.executemany("INSERT INTO ballast VALUES (?)", [(os.urandom(400),) for _ in range(400)])
    data = bytearray(db.read_bytes())
    data[4096 * 3 : 4096 * 20] = b"\x55" * (4096 * 17)
    db.write_bytes(bytes(data))
    result = animebot(config, "work")
    line = one_line_error(result)
    assert "is damaged" in line and "not a database" not in line
    assert "job(s) waiting" not in result.stderr


def test_a_database_that_is_not_one_is_named_so(config: Path, data_dir: Path) -> None:
    (data_dir / "animebot.sqlite").write_bytes(b"hello" * 1000)
    line = one_line_error(animebot(config, "work"))
    assert "is not an SQLite database" in line


def test_a_read_only_data_dir_stops_the_start_with_one_line(config: Path, data_dir: Path) -> None:
    make_database(config)
    with read_only(data_dir):
        line = one_line_error(animebot(config, "generate", "1girl", "--steps", "1", "--size", "64x64"), code=2)
    assert "data_dir: cannot write" in line and "Read-only file system" in line and "not a database" not in line


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("afile", "afile exists and is not a folder"),
        ("afile/inside", "afile is a file, not a folder"),
        ("/dev/null", "/dev/null exists and is not a folder"),
    ],
)
def test_a_data_dir_that_cannot_be_a_folder_stops_the_start_with_one_line(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(f"data_dir = '{where}'\n", encoding="utf-8")
    assert message in one_line_error(animebot(config, "work"), code=2)  # the config refuses it


def test_a_database_from_a_newer_release_is_refused_with_one_line(config: Path, data_dir: Path) -> None:
    make_database(config)
    with sqlite3.connect(data_dir / "animebot.sqlite") as raw:
        raw.execute("PRAGMA user_version = 99")
    line = one_line_error(animebot(config, "work"))
    assert "schema version 99, newer than this bot's" in line and "upgrade the bot" in line
    assert not list(data_dir.glob("*.bak"))  # nothing was touched


async def test_a_failed_start_closes_what_it_opened(tmp_path: Path, models_dir: Path) -> None:
    """In-process: after a failed start, no aiosqlite thread is left (it kept the process alive) and the
    data directory is free again."""
    config_path = tmp_path / "config.toml"
    config_path.write_text('data_dir = "data"\n', encoding="utf-8")
    config = load_config(config_path)
    config.tags_db.parent.mkdir(parents=True, exist_ok=True)
    config.tags_db.write_bytes(b"garbage" * 100)
    before = set(threading.enumerate())
    cache = ModelCache(RuntimeOptions("cpu", None, models_dir), capacity=1, location="cpu")
    service = GenerationService(config, cache)
    with pytest.raises(StartError, match="not a SQLite database"):
        await service.start()
    await service.close()  # harmless after a failed start
    leftover = [t for t in threading.enumerate() if t not in before and "_connection_worker" in t.name]
    assert [t for t in leftover if t.is_alive()] == [], leftover
    ProcessLock.acquire(config.database).release()


# -- a second process on the same data directory refuses; nothing runs twice -------------------------


class SlowBackend:
    """A backend that runs until it is cancelled (a job that stays `running` for as long as a test needs)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.memory_mode: MemoryMode = "high"

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        while cancel is None or not cancel.cancelled:
            time.sleep(0.05)
        from inference.types import GenerationCancelled

        raise GenerationCancelled()

    def set_memory_mode(self, mode: MemoryMode) -> None:
        self.memory_mode = mode

    def footprint(self) -> Footprint:
        return reference_footprint(self.spec)

    def offload(self) -> None: ...

    def activate(self) -> None: ...

    def unload(self) -> None: ...


def slow_loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
    return SlowBackend(spec)


async def hold(config_path: Path) -> None:
    """The child: a bot process with one job running until it is killed."""
    config = load_config(config_path)
    cache = ModelCache(RuntimeOptions("cpu", None, config.cache_dir), capacity=1, location="cpu", loader=slow_loader)
    service = GenerationService(config, cache)
    await service.start()
    events = every_event(service.events)
    job = await service.submit(GenerationRequest("tiny-sdxl", PromptChoices("1girl"), size="64x64", steps=1), "cli:a")
    while not (isinstance(event := await events.get(), JobStarted) and event.job_id == job.id):
        pass
    print(f"running {job.id}", flush=True)
    await asyncio.Event().wait()


def test_a_second_process_refuses_and_never_runs_the_first_ones_job_again(
    tmp_path: Path, config: Path, data_dir: Path
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.bot.core.test_faults", "hold", str(config)],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("running "), (line, holder.poll())
        db = data_dir / "animebot.sqlite"
        assert read_jobs(db) == [(1, "running", 1, None)]

        for args in (["generate", "1girl", "--steps", "1", "--size", "64x64"], ["work"]):
            message = one_line_error(animebot(config, *args))
            assert f"another animebot process (pid {holder.pid}) is using" in message, message
        dry = animebot(config, "generate", "1girl", "--dry-run")  # needs no queue: works meanwhile
        assert dry.returncode == 0, dry.stderr
        assert read_jobs(db) == [(1, "running", 1, None)]  # not requeued, not run again, nothing added
        with pytest.raises(LockHeld) as held:
            ProcessLock.acquire(db)
        assert held.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=30)
    ProcessLock.acquire(db).release()  # the operating system released the dead holder's lock


def test_the_lock_names_its_holder_and_is_free_after_release(tmp_path: Path) -> None:
    db = tmp_path / "data" / "animebot.sqlite"
    lock = ProcessLock.acquire(db)
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        ProcessLock.acquire(db)
    lock.release()
    lock.release()  # twice is harmless
    ProcessLock.acquire(db).release()


# -- faults while running: the worker lives, nothing is lost ----------------------------------------


class QuickRetryWorker(GpuWorker):
    def __init__(self, source: object, cache: ModelCache, **options: Any) -> None:
        super().__init__(source, cache, retry=(0.05, 0.2), **options)  # type: ignore[arg-type]


@pytest.fixture
async def service_factory(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[Path], Awaitable[GenerationService]]]:
    monkeypatch.setattr(Store, "BUSY_TIMEOUT", 0.2)
    services: list[GenerationService] = []

    async def make(data: Path) -> GenerationService:
        config = load_config(write_config(tmp_path, data))
        cache = ModelCache(RuntimeOptions("cpu", None, models_dir), capacity=1, location="cpu")
        service = GenerationService(config, cache, worker_class=QuickRetryWorker)
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.close()


def request(seed: int, count: int = 1) -> GenerationRequest:
    return GenerationRequest("tiny-sdxl", PromptChoices("1girl, smile"), seed=seed, steps=1, size="64x64", count=count)


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    while not any(text in record.getMessage() for record in caplog.records):
        await asyncio.sleep(0.02)


async def test_a_lock_held_by_another_process_while_a_job_finishes(
    tmp_path: Path, service_factory: Callable[[Path], Awaitable[GenerationService]], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 8 bugs 1 and 5: the job whose images are written while another process holds the database
    ends done with its images once the lock is gone (not "could not be saved", not running forever), and
    the claim that failed meanwhile did not stop the worker: the next job runs too."""
    caplog.set_level(logging.WARNING, logger="inference.worker")
    service = await service_factory(tmp_path / "data")
    db = service.config.database
    gate = threading.Event()
    finished: dict[int, str] = {}

    def on_finished(event: object) -> None:
        if isinstance(event, JobFinished):
            finished[event.job_id] = event.state

    events = every_event(service.events)
    await service.queue.set_paused(True)
    first = await service.submit(request(1, count=2), "cli:a")
    second = await service.submit(request(2), "cli:b")
    original_generate = GpuWorker._generate

    def gated(self: GpuWorker, *args: object) -> list[Image.Image]:
        gate.wait(60)
        return original_generate(self, *args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GpuWorker, "_generate", gated)
        await service.queue.set_paused(False)
        while not (isinstance(ev := await asyncio.wait_for(events.get(), 60), JobStarted) and ev.job_id == first.id):
            pass
        with DatabaseLocker(db) as locker:
            gate.set()
            await asyncio.wait_for(wait_for_log(caplog, f"job {first.id}: recording it done failed"), 60)
            await asyncio.wait_for(wait_for_log(caplog, "claiming the next job failed"), 60)
            assert read_jobs(db)[0][1] == "running"
            locker.release()
        while len(finished) < 2:
            on_finished(await asyncio.wait_for(events.get(), 60))
    assert finished == {first.id: "done", second.id: "done"}
    done = await service.queue.jobs.get(first.id)
    assert done is not None and done.state == JobState.DONE and done.error is None and done.attempts == 1
    images = await service.queue.jobs.images(first.id)
    assert len(images) == 2 and all(service.image_path(i.path).is_file() for i in images)


async def test_an_injected_full_disk_fails_the_job_clearly_and_the_cli_exits_non_zero(
    capsys: pytest.CaptureFixture[str], config: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("inference.worker.write_png", full)
    args = ["generate", "1girl", "--steps", "1", "--size", "64x64", "--config", str(config)]
    code = await asyncio.to_thread(main, args)
    err = capsys.readouterr().err
    reason = "The images could not be saved: the disk is full."
    assert code == 1
    assert err.strip().splitlines()[-1] == f"animebot: error: job #1 failed: {reason}"
    assert read_jobs(data_dir / "animebot.sqlite") == [(1, "failed", 1, reason)]
    assert not list(data_dir.rglob("*.png*"))


def test_a_really_full_disk_fails_the_job_frees_the_space_and_the_cli_exits(
    tmp_path: Path, shared_models: Path
) -> None:
    """A 1 MiB tmpfs holding the data directory, filled until a 256x256 pair of PNGs cannot fit: the
    partial file is removed (left, it kept the disk full and the job's failure could not be recorded),
    the job fails with "the disk is full", the CLI exits 1; freed, the next job runs."""
    data = tmp_path / "data"
    with tmpfs(data, "1m"):
        (data / "models").symlink_to(shared_models, target_is_directory=True)
        config = write_config(tmp_path, data)
        make_database(config)
        ballast = data / "ballast"
        free = shutil.disk_usage(data).free
        ballast.write_bytes(b"\0" * (free - 160 * 1024))
        result = animebot(config, "generate", "1girl", "--steps", "1", "--size", "256x256", "--count", "2")
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last == "animebot: error: job #1 failed: The images could not be saved: the disk is full.", result.stderr
        assert "Traceback" not in result.stderr
        assert [p.name for p in (data / "images").rglob("*") if p.is_file()] == []
        assert shutil.disk_usage(data).free >= 150 * 1024  # the partial file's space is back
        ballast.unlink()
        again = animebot(config, "generate", "1girl", "--steps", "1", "--size", "64x64")
        assert again.returncode == 0, again.stderr
        states = [row[1] for row in read_jobs(data / "animebot.sqlite")]
        assert states == ["failed", "done"]


def child_main(argv: Sequence[str]) -> None:
    mode, config = argv
    assert mode == "hold", mode
    asyncio.run(hold(Path(config)))


if __name__ == "__main__":
    child_main(sys.argv[1:])


def fill(path: Path) -> None:
    """Write zeros to `path` until its filesystem has not one block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


async def test_a_disk_that_fills_up_while_a_job_runs(
    tmp_path: Path,
    shared_models: Path,
    service_factory: Callable[[Path], Awaitable[GenerationService]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The data directory's disk (a real tmpfs) fills up completely while a job generates: its images
    cannot be written, and the database may not be writable either. The job fails with "the disk is
    full" (recorded as soon as the database can be written), nothing half-written is left, and once
    space is freed the worker, still alive, runs the next job."""
    caplog.set_level(logging.WARNING, logger="inference.worker")
    data = tmp_path / "data"
    with tmpfs(data, "2m"):
        (data / "models").symlink_to(shared_models, target_is_directory=True)
        service = await service_factory(data)
        gate = threading.Event()
        events = every_event(service.events)
        await service.queue.set_paused(True)
        first = await service.submit(request(1, count=2), "cli:a")
        second = await service.submit(request(2), "cli:b")
        original_generate = GpuWorker._generate

        def gated(self: GpuWorker, *args: object) -> list[Image.Image]:
            gate.wait(60)
            return original_generate(self, *args)  # type: ignore[arg-type]

        finished: dict[int, JobFinished] = {}

        async def finish(job_id: int) -> None:
            while job_id not in finished:
                event = await events.get()
                if isinstance(event, JobFinished):
                    finished[event.job_id] = event

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(GpuWorker, "_generate", gated)
            await service.queue.set_paused(False)
            while not (isinstance(e := await asyncio.wait_for(events.get(), 60), JobStarted) and e.job_id == first.id):
                pass
            ballast = data / "ballast"
            fill(ballast)
            gate.set()
            # Either the failure is recorded at once (the WAL had room), or the database is full too and
            # the worker retries: then free the space.
            blocked = asyncio.create_task(wait_for_log(caplog, f"job {first.id}: recording it failed failed"))
            done, _ = await asyncio.wait(
                [asyncio.create_task(finish(first.id)), blocked], timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, "neither recorded nor retried"
            ballast.unlink()
            await asyncio.wait_for(finish(first.id), 60)
            await asyncio.wait_for(finish(second.id), 60)
            blocked.cancel()
        assert finished[first.id].state == "failed"
        assert finished[first.id].error == "The images could not be saved: the disk is full."
        assert finished[second.id].state == "done"
        assert [p.name for p in data.rglob("*") if p.name.startswith(f"{first.id}-") or p.suffix == ".part"] == []
