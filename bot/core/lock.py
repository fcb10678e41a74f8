"""One process owns a data directory's queue: an OS lock on a file next to the database.

The lock (flock on POSIX, msvcrt.locking on Windows) is held for the service's whole life and
released at close; if the process dies, even by SIGKILL, the operating system releases it. So a
second process on the same data directory (`animebot generate` while the bot runs) refuses to start,
naming the process that holds it, instead of taking the first one's running job for a crashed one
and running it again. The lock file keeps the holder's pid (for that message) and is never deleted:
deleting it would let two processes lock two different files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path

from bot.core.folders import make_folder


class LockError(Exception):
    """The lock file cannot be created or locked (a read-only folder...). One line for the operator."""


class LockHeld(LockError):
    """Another live process holds the lock."""

    def __init__(self, path: Path, database: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"another animebot process (pid {pid})" if pid else "another animebot process"
        super().__init__(
            f"{holder} is using {database}: one process runs a data directory's queue; "
            "stop it first, or give this one another data_dir"
        )


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class ProcessLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, database: Path) -> ProcessLock:
        """Lock the data directory of `database` for this process, or raise LockHeld / LockError. Never
        waits (a few system calls: fine on the event loop)."""
        path = lock_path(database)
        problem = make_folder(path.parent)
        if problem is not None:
            raise LockError(f"data directory: {problem}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise LockError(
                    f"{path.parent} is read-only: the bot must be able to write there (it keeps {path.name} and "
                    f"{database.name} in it)"
                ) from None
            raise LockError(f"cannot create the lock file {path}: {e.strerror or e}") from None
        try:
            if not _try_lock(fd):
                raise LockHeld(path, database, _read_pid(fd))
        except OSError as e:
            os.close(fd)
            raise LockError(f"cannot lock {path}: {e.strerror or e}") from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # only for the message a second process shows (a full disk...)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Unlock (closing the file releases the lock too). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        _unlock(fd)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
