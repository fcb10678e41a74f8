"""The crash/restart guarantee, with real processes: a bot process that dies (SIGKILL, no cleanup)
loses no job and runs none twice. The next `animebot work` runs what was waiting, re-runs what was
running, and leaves what was done alone.

A child process (this module run with `python -m tests.bot.core.test_restart submit ...`) starts a
GenerationService on a fresh data_dir, submits a few tiny-sdxl jobs and lets its worker run them.
The test watches the SQLite database (read-only connections) and kills the child at a known point,
then runs the real CLI (`python -m bot work`) and checks the database and the files.

The children run with one torch thread: the test is about durability, not speed, and with two cores
shared with other test runs two OpenMP threads per process can be slowed down many times over.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bot.config import load_config
from bot.core.events import EventBus
from bot.core.jobs import params_from_json
from bot.core.queue import JobQueue
from bot.core.quotas import QuotaLimits, Quotas
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest
from inference.png import read_parameters

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO = Path(__file__).resolve().parents[3]
JOBS = 6
STEPS = 6  # ~0.2-0.4 s per job at 64x64 on one CPU thread
SIZE = "64x64"
OWNERS = ("cli:restart-a", "cli:restart-b")
PHASE_TIMEOUT = 240.0  # seconds for one process phase; ~10 s on an idle 2-core machine
POLL = 0.05


# -- the child process ------------------------------------------------------------------------------


def job_request(i: int) -> GenerationRequest:
    """Job i: 1 or 2 images, a fixed seed per job (so a re-run writes the same file names)."""
    return GenerationRequest(
        "tiny-sdxl",
        PromptChoices(f"1girl, smile, job {i}"),
        seed=1000 + 10 * i,
        steps=STEPS,
        size=SIZE,
        count=1 + i % 2,
    )


async def child_submit(config_path: Path, jobs: int, paused: bool) -> None:
    """Start the service, (pause the queue,) submit `jobs` jobs, then work until killed."""
    from bot.core.service import GenerationService

    service = GenerationService(load_config(config_path))
    await service.start()
    if paused:
        await service.set_paused(True)
    for i in range(jobs):
        await service.submit(job_request(i), OWNERS[i % len(OWNERS)])
    print(f"submitted {jobs}", flush=True)
    await asyncio.Event().wait()  # the worker runs (or, paused, waits) until the test kills us


def child_main(argv: Sequence[str]) -> None:
    mode, config, jobs, paused = argv
    assert mode == "submit", mode
    asyncio.run(child_submit(Path(config), int(jobs), paused == "paused"))


# -- helpers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    id: int
    state: str
    attempts: int
    image_count: int
    seeds: tuple[int, ...]
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class ImageRow:
    job_id: int
    idx: int
    seed: int
    path: str
    width: int
    height: int
    parameters: str


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def connect_ro(db: Path) -> sqlite3.Connection:
    """A read-only connection: it never writes, checkpoints or deletes the WAL."""
    connection = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    return connection


def read_jobs(db: Path) -> dict[int, JobRow]:
    connection = connect_ro(db)
    try:
        rows = connection.execute(
            "SELECT id, state, attempts, image_count, params, started_at, finished_at FROM jobs ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    return {
        row["id"]: JobRow(
            row["id"],
            row["state"],
            row["attempts"],
            row["image_count"],
            params_from_json(row["params"]).seeds,
            row["started_at"],
            row["finished_at"],
        )
        for row in rows
    }


def read_images(db: Path) -> list[ImageRow]:
    connection = connect_ro(db)
    try:
        rows = connection.execute(
            "SELECT job_id, idx, seed, path, width, height, parameters FROM images ORDER BY job_id, idx"
        ).fetchall()
    finally:
        connection.close()
    return [ImageRow(*tuple(row)) for row in rows]


def read_scalar(db: Path, sql: str) -> object:
    connection = connect_ro(db)
    try:
        row = connection.execute(sql).fetchone()
    finally:
        connection.close()
    return None if row is None else row[0]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"


class Child:
    """The bot process that gets killed. Its output goes to files (a full pipe could block it)."""

    def __init__(self, folder: Path, config: Path, paused: bool) -> None:
        self.stdout = folder / "child.out"
        self.stderr = folder / "child.err"
        args = ["submit", str(config), str(JOBS), "paused" if paused else "running"]
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.bot.core.test_restart", *args],
                cwd=REPO,
                env=child_env(),
                stdout=out,
                stderr=err,
            )

    def output(self) -> str:
        return f"child stdout:\n{tail(self.stdout)}\nchild stderr:\n{tail(self.stderr)}"

    def kill(self) -> float:
        """SIGKILL; returns when the process is gone (the time it was killed)."""
        self.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        self.process.wait(timeout=30)
        assert self.process.returncode == -signal.SIGKILL, self.output()
        return killed_at

    def ensure_dead(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def wait_for(db: Path, condition: Callable[[dict[int, JobRow]], bool], child: Child, what: str) -> dict[int, JobRow]:
    """Poll the database until `condition(jobs)` holds. Fails at once if the child exits."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    jobs: dict[int, JobRow] = {}
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            pytest.fail(f"the child exited ({child.process.returncode}) before {what}\n{child.output()}")
        if db.is_file():
            try:
                jobs = read_jobs(db)
            except sqlite3.OperationalError:  # not created or migrated yet, or busy
                jobs = {}
            if condition(jobs):
                return jobs
        time.sleep(POLL)
    states = {job.id: job.state for job in jobs.values()}
    pytest.fail(f"timed out after {PHASE_TIMEOUT:.0f}s waiting for {what}; jobs: {states}\n{child.output()}")


def count(jobs: dict[int, JobRow], state: str) -> int:
    return sum(job.state == state for job in jobs.values())


def run_work(config: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user (or a service manager) would run it after a crash."""
    result = subprocess.run(
        [sys.executable, "-m", "bot", "work", "--config", str(config)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=PHASE_TIMEOUT,
    )
    assert result.returncode == 0, f"animebot work exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def assert_every_job_done_exactly_once(data_dir: Path, db: Path) -> dict[int, JobRow]:
    jobs = read_jobs(db)
    assert len(jobs) == JOBS
    assert {job.state for job in jobs.values()} == {"done"}, {job.id: job.state for job in jobs.values()}
    assert all(job.finished_at is not None and job.started_at is not None for job in jobs.values())

    images = read_images(db)
    by_job: dict[int, list[ImageRow]] = {}
    for image in images:
        by_job.setdefault(image.job_id, []).append(image)
    for job in jobs.values():
        rows = by_job.get(job.id, [])
        assert [row.idx for row in rows] == list(range(job.image_count)), (job, rows)
        assert [row.seed for row in rows] == list(job.seeds)
    paths = [image.path for image in images]
    assert len(set(paths)) == len(paths) == sum(job.image_count for job in jobs.values())

    for image in images:
        path = data_dir / image.path
        assert path.is_file(), path
        with Image.open(path) as opened:
            assert opened.format == "PNG"
            assert opened.size == (image.width, image.height) == (64, 64)
            opened.verify()
        parameters = read_parameters(path)
        assert parameters == image.parameters, path
        seed = re.search(r"\bSeed: (\d+)", parameters)
        assert seed is not None and int(seed.group(1)) == image.seed, parameters

    # No stray files: every PNG on disk is a recorded image, and no half-written `.part` is left.
    on_disk = sorted(str(p.relative_to(data_dir)) for p in (data_dir / "images").rglob("*") if p.is_file())
    assert on_disk == sorted(paths)

    # Quota usage was recorded once per job (a restart does not count a job again).
    assert read_scalar(db, "SELECT COUNT(*) FROM usage") == JOBS
    assert read_scalar(db, "SELECT COUNT(DISTINCT job_id) FROM usage") == JOBS
    return jobs


def image_mtimes(data_dir: Path, db: Path, job_ids: set[int]) -> dict[str, int]:
    return {
        image.path: (data_dir / image.path).stat().st_mtime_ns for image in read_images(db) if image.job_id in job_ids
    }


async def set_paused(config_path: Path, paused: bool) -> None:
    """JobQueue.set_paused on the bot's database, without starting a worker."""
    config = load_config(config_path)
    store = await Store.open(config.database)
    try:
        quotas = Quotas(store, QuotaLimits(None, None))
        queue = JobQueue(store, quotas, config.models, EventBus(), config.data_dir)
        await queue.set_paused(paused)
    finally:
        await store.close()


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"data_dir = '{data_dir}'\n\n[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n", encoding="utf-8")
    return path


# -- tests ------------------------------------------------------------------------------------------


def test_killed_while_running_each_job_runs_to_done_exactly_once(tmp_path: Path, data_dir: Path, config: Path) -> None:
    db = data_dir / "animebot.sqlite"
    child = Child(tmp_path, config, paused=False)
    try:
        wait_for(
            db,
            lambda jobs: len(jobs) == JOBS and count(jobs, "done") >= 1 and count(jobs, "running") >= 1,
            child,
            "one job done and another running",
        )
        killed_at = child.kill()
    finally:
        child.ensure_dead()

    before = read_jobs(db)  # what the dead process left: the state the restart starts from
    done_before = {job.id for job in before.values() if job.state == "done"}
    running_before = {job.id for job in before.values() if job.state == "running"}
    queued_before = {job.id for job in before.values() if job.state == "queued"}
    assert done_before and running_before, {job.id: job.state for job in before.values()}
    assert done_before | running_before | queued_before == set(before)
    assert all(before[i].attempts == 1 for i in done_before | running_before)
    assert all(before[i].attempts == 0 for i in queued_before)
    done_mtimes = image_mtimes(data_dir, db, done_before)
    assert len(done_mtimes) == sum(before[i].image_count for i in done_before)

    result = run_work(config)
    waiting = len(running_before) + len(queued_before)
    assert f"{waiting} job(s) waiting ({len(running_before)} interrupted)" in result.stderr, result.stderr

    after = assert_every_job_done_exactly_once(data_dir, db)
    for i in done_before:  # not run again
        assert after[i].attempts == 1
        assert (after[i].started_at, after[i].finished_at) == (before[i].started_at, before[i].finished_at)
    assert image_mtimes(data_dir, db, done_before) == done_mtimes
    for i in running_before:  # started once by the dead process, once more by `work`
        assert after[i].attempts == 2, after[i]
        assert (after[i].finished_at or 0.0) > killed_at
    for i in queued_before:
        assert after[i].attempts == 1, after[i]
        assert (after[i].finished_at or 0.0) > killed_at


def test_killed_with_only_queued_jobs_they_all_run_after_restart(tmp_path: Path, data_dir: Path, config: Path) -> None:
    db = data_dir / "animebot.sqlite"
    child = Child(tmp_path, config, paused=True)
    try:
        wait_for(db, lambda jobs: len(jobs) == JOBS, child, f"{JOBS} jobs submitted")
        # Give a wrongly unpaused worker a chance to show itself before the kill: the child prints after
        # its last submit; wait for that, then half a second (a worker claims a job within milliseconds,
        # before it loads the model).
        deadline = time.monotonic() + PHASE_TIMEOUT
        while "submitted" not in child.stdout.read_text(encoding="utf-8"):
            assert time.monotonic() < deadline, child.output()
            assert child.process.poll() is None, child.output()
            time.sleep(POLL)
        time.sleep(0.5)
        child.kill()
    finally:
        child.ensure_dead()

    before = read_jobs(db)
    assert {job.state for job in before.values()} == {"queued"}
    assert all(job.attempts == 0 and job.started_at is None for job in before.values())
    assert read_scalar(db, "SELECT COUNT(*) FROM images") == 0
    assert read_scalar(db, "SELECT value FROM bot_state WHERE key = 'queue_paused'") == "1"  # survives the kill

    asyncio.run(set_paused(config, False))  # an admin resumes the queue (through the queue's own API)
    assert read_scalar(db, "SELECT value FROM bot_state WHERE key = 'queue_paused'") == "0"

    result = run_work(config)
    assert f"{JOBS} job(s) waiting (0 interrupted)" in result.stderr, result.stderr
    after = assert_every_job_done_exactly_once(data_dir, db)
    assert all(job.attempts == 1 for job in after.values())


if __name__ == "__main__":
    child_main(sys.argv[1:])
