"""Progress of `animebot work` and of model loads: a bar on a terminal (the real CLI with its stderr on a
pseudo-terminal), plain lines in a log or a pipe."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import load_config
from bot.core.events import JobFinished, JobProgress, JobStarted, JobSubmitted, ModelLoading
from bot.core.service import GenerationService
from bot.progress import Progress, WorkProgress, loading_progress
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest

REPO = Path(__file__).resolve().parents[2]


def queue_paused(config: Path, count: int) -> list[int]:
    """`count` jobs left waiting in a paused queue (as an admin's pause or a crash leaves them)."""

    async def submit() -> list[int]:
        service = GenerationService(load_config(config))
        await service.start()
        try:
            await service.set_paused(True)
            request = GenerationRequest("tiny-sdxl", PromptChoices("1girl"), size="64x64", steps=2)
            return [(await service.submit(request, "cli:test", exempt=True)).id for _ in range(count)]
        finally:
            await service.close()

    return asyncio.run(submit())


@pytest.fixture
def config(tmp_path: Path, models_dir: Path) -> Path:
    """A data dir whose built-in models are the session's (built once)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models_dir, target_is_directory=True)
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "data"\n', encoding="utf-8")
    return path


def test_work_writes_plain_lines_when_stderr_is_not_a_terminal(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = queue_paused(config, 2)
    assert main(["work", "--resume", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert f"job #{first}: done" in out and f"job #{second}: done" in out
    lines = err.splitlines()
    assert "\r" not in err and "\x1b" not in err
    assert lines[0] == "2 job(s) waiting (0 interrupted)"
    work = [line for line in lines if line.startswith("work: ")]
    # The worker may claim the next job while the last one's images are recorded: starts and ends interleave.
    assert work[0] == f"work: 0/2 jobs (job #{first} on tiny-sdxl)"
    assert work[-1] == f"work: 2/2 jobs (job #{second} done)"
    assert f"work: 1/2 jobs (job #{first} done)" in work and len(work) == 4
    assert {f"work: {n}/2 jobs (job #{second} on tiny-sdxl)" for n in (0, 1)} & set(work)
    loading = [line for line in lines if line.startswith("loading tiny-sdxl: ")]
    assert loading[-1].startswith("loading tiny-sdxl: ") and loading[-1].endswith(" stages (ready)")
    done, total = loading[-1].split(": ")[1].split(" ")[0].split("/")
    assert done == total and len(loading) == int(total) + 1  # each stage once, then ready


def run_on_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """The real CLI with its stderr on a pseudo-terminal of 120 columns; (exit code, stdout, terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=slave, text=True
    )
    os.close(slave)
    received = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        received.extend(chunk)
    out = child.stdout.read() if child.stdout else ""
    code = child.wait(timeout=300)
    os.close(master)
    return code, out, received.decode("utf-8", "replace")


def test_work_draws_bars_on_a_terminal(config: Path) -> None:
    first, second = queue_paused(config, 2)
    code, out, terminal = run_on_terminal(["work", "--resume", "--config", str(config)], config.parent)
    assert code == 0, terminal
    assert f"job #{second}: done" in out
    assert "\r" in terminal  # redrawn in place
    # tqdm shows the rate as "N jobs/s", or as "Ns/ jobs" when slower than one a second: either, by the machine.
    assert "\rwork: 100%|" in terminal and "| 2/2 [" in terminal
    assert re.search(rf" jobs(/s)?, job #{second} done]", terminal)
    assert re.search(rf" jobs(/s)?, job #{first} on tiny-sdxl]", terminal) and f"job #{first}: step 2/2]" in terminal
    assert "\rloading tiny-sdxl: 100%|" in terminal and re.search(r" stages(/s)?, ready]", terminal)
    assert "work: 2/2 jobs (" not in terminal  # no plain lines on a terminal
    assert first < second


def test_a_failed_start_draws_nothing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "animebot.sqlite").write_bytes(b"hello" * 1000)
    (tmp_path / "config.toml").write_text('data_dir = "data"\n', encoding="utf-8")
    code, _, terminal = run_on_terminal(["work", "--config", "config.toml"], tmp_path)
    assert code == 1
    lines = [line for line in terminal.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("animebot: error: ") and "\r" not in lines[0]


def test_work_progress_counts_jobs_queued_meanwhile() -> None:
    stream = io.StringIO()
    work = WorkProgress(Progress(stream, interactive=False))
    work(JobStarted(1, "m"))  # before the queue was counted
    work.remaining(1)  # the same job, running
    work(JobProgress(1, 1, 2, 0.1, 0.1))  # steps do not make a line of their own
    work(JobSubmitted(2, "m"))
    work(JobFinished(1, "done"))
    work(JobFinished(2, "cancelled"))
    assert stream.getvalue().splitlines() == [
        "work: 0/1 jobs (job #1 on m)",
        "work: 0/2 jobs",
        "work: 1/2 jobs (job #1 done)",
        "work: 2/2 jobs (job #2 cancelled)",
    ]


def test_loading_progress_on_a_terminal_and_off() -> None:
    plain = io.StringIO()
    listener = loading_progress(Progress(plain, interactive=False))
    for event in (ModelLoading("m", "unet", 0, 2), ModelLoading("m", "vae", 1, 2), ModelLoading("m", "ready", 2, 2)):
        listener(event)
    assert plain.getvalue().splitlines() == [
        "loading m: 0/2 stages (unet)",
        "loading m: 1/2 stages (vae)",
        "loading m: 2/2 stages (ready)",
    ]
    drawn = io.StringIO()
    listener = loading_progress(Progress(drawn, interactive=True))
    listener(ModelLoading("m", "unet", 0, 2))
    listener(ModelLoading("m", "ready", 2, 2))
    assert "\r" in drawn.getvalue() and "loading m: 100%" in drawn.getvalue() and "ready" in drawn.getvalue()
