"""Faults for tests, made for real: another process holding a SQLite write lock, a read-only folder,
a small full filesystem (tmpfs). A fault that this machine cannot make skips the test that needs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core.events import Event, EventBus

REPO = Path(__file__).resolve().parents[3]

_LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
connection.execute("BEGIN " + sys.argv[2])
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
print("released", flush=True)
"""


class DatabaseLocker:
    """Another process holding a write transaction (BEGIN IMMEDIATE, or EXCLUSIVE) on a database until
    release(), as a backup tool or a second program would."""

    def __init__(self, db: Path, mode: str = "IMMEDIATE") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(db), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "locked", line

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            assert self.process.stdout.readline().strip() == "released"
            self.process.wait(timeout=30)

    def __enter__(self) -> DatabaseLocker:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=30)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "1m") mounted on `folder` (created, empty): a disk that fills up for real.
    Skips the test where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not can_mount() or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` and everything in it made read-only for this process and its children. Not root:
    permissions (root ignores them). Root: the contents are copied onto a tmpfs remounted read-only."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if not p.is_symlink()}
        for path in modes:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    saved = folder.with_name(folder.name + ".contents")
    shutil.copytree(folder, saved, symlinks=True)
    with tmpfs(folder, "64m"):
        shutil.copytree(saved, folder, symlinks=True, dirs_exist_ok=True)
        if not _mount("-o", "remount,ro", str(folder)):
            pytest.skip("cannot remount a tmpfs read-only here")
        yield folder


def every_event(events: EventBus) -> asyncio.Queue[Event]:
    """A queue that receives every event the service publishes (tests watch several jobs at once)."""
    received: asyncio.Queue[Event] = asyncio.Queue()
    events.listen(received.put_nowait)
    return received
