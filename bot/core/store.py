"""The SQLite database (aiosqlite): connection, schema migrations and transactions.

One connection, WAL journal, foreign keys on. Every write goes through `transaction()`, which holds
an asyncio lock for its whole duration: aiosqlite runs statements one at a time on its own thread,
but without the lock another coroutine's statements could land inside our transaction between two
awaits. With it, check-then-write sequences (quotas) are atomic.

Errors: a database that cannot be used at all (not a database, damaged, read-only, from a newer
release) raises StoreError with a one-line message when it is opened. Later, a database that stays
locked past the busy timeout, a full disk or an I/O error raise StoreBusy (bot.core.errors): nothing
was written, and the caller may try again. A database found damaged while running raises StoreError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from bot.core.errors import StoreBusy
from bot.core.folders import make_folder
from bot.core.migrations import MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)

# SQLite's primary result codes (the low byte of an extended code).
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_UNWRITABLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY}
_DAMAGED = {sqlite3.SQLITE_CORRUPT}
_NOT_A_DATABASE = {sqlite3.SQLITE_NOTADB}
_CANNOT_OPEN = {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH}


class StoreError(Exception):
    """The database cannot be used (newer schema, not a database, damaged, read-only...). The message is
    one line for the person who runs the bot."""


def _code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _reason(error: sqlite3.Error) -> str:
    """A short English reason for a transient failure, without the path (the caller adds it)."""
    code = _code(error)
    if code in _BUSY:
        return f"the database is locked by another program (waited {Store.BUSY_TIMEOUT:g} s)"
    if code == sqlite3.SQLITE_FULL:
        return "the disk is full"
    if code == sqlite3.SQLITE_READONLY:
        return "the database is read-only"
    if code == sqlite3.SQLITE_IOERR:
        return f"disk I/O error ({error})"
    return str(error)


class Store:
    BUSY_TIMEOUT = 5.0  # seconds a statement waits for another connection's write lock (tests shorten it)

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None  # the task inside transaction()

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (create, migrate) the database at `path`. Raises StoreError with a one-line reason; nothing
        is left open then."""
        _check_path(path)
        connection = aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
        try:
            await connection
        except sqlite3.Error as e:
            # aiosqlite stops its thread without waiting: wait for it here, or it outlives the event loop
            # (and prints an error when it reports to the closed loop).
            thread = getattr(connection, "_thread", None)
            if thread is not None:
                await asyncio.to_thread(thread.join, 10)
            raise _open_error(path, e) from None
        connection.row_factory = sqlite3.Row
        store = cls(connection, path)
        try:
            await store._setup()
        except sqlite3.Error as e:
            await connection.close()
            raise _open_error(path, e) from None
        except BaseException:
            await connection.close()
            raise
        return store

    async def _setup(self) -> None:
        # The busy timeout first: another process's lock must not fail the next pragma at once.
        await self._db.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT * 1000)}")
        await self._db.execute("PRAGMA journal_mode = WAL")
        await self._db.execute("PRAGMA foreign_keys = ON")
        await self._db.execute("PRAGMA synchronous = NORMAL")
        # A damaged file shows here, at start, with a clear message, rather than as a raw error in the
        # middle of a user's request (or as an empty queue).
        async with self._db.execute("PRAGMA quick_check") as cursor:
            problems = [str(row[0]) for row in await cursor.fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"database disk image is malformed ({problems[0]})")
        await self.migrate()

    async def migrate(self) -> None:
        version = int(await self._scalar_raw("PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this bot's {SCHEMA_VERSION}: upgrade the bot"
            )
        if version == SCHEMA_VERSION:
            return
        if version > 0 or await self._scalar_raw("SELECT COUNT(*) FROM sqlite_master"):
            await self.backup(self.backup_path(version))
        for number in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[number - 1]
            # executescript commits first; the whole migration and its version bump are one transaction.
            await self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    def backup_path(self, version: int) -> Path:
        """Where the copy taken before upgrading from schema `version` goes (animebot.sqlite.v2.bak)."""
        return self.path.with_name(f"{self.path.name}.v{version}.bak")

    async def backup(self, target: Path) -> None:
        """A consistent copy of the whole database (VACUUM INTO), written aside and then renamed over
        `target`, so a failed copy never replaces a good older one. Raises StoreError."""
        part = target.with_name(target.name + ".part")
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        try:
            await self._db.execute("VACUUM INTO ?", (str(part),))
            await asyncio.to_thread(os.replace, part, target)
        except (sqlite3.Error, OSError) as e:
            with contextlib.suppress(OSError):
                part.unlink()
            reason = _reason(e) if isinstance(e, sqlite3.Error) else (e.strerror or str(e))
            raise StoreError(f"could not back up {self.path} to {target} before upgrading it: {reason}") from None

    async def close(self) -> None:
        """Close the connection and wait for aiosqlite's thread to end (a thread left running keeps the
        process from exiting)."""
        await self._db.close()
        thread = getattr(self._db, "_thread", None)
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """sqlite3 errors a caller can act on, as StoreBusy (try again later) or StoreError (damaged)."""
        try:
            yield
        except sqlite3.Error as e:
            code = _code(e)
            if code in _BUSY or code in _UNWRITABLE:
                raise StoreBusy(f"{self.path}: {_reason(e)}") from e
            if code in _DAMAGED:
                raise StoreError(f"{self.path} is damaged ({e}): restore it from a backup") from e
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), exclusive among this process's coroutines.
        Re-entrant within one task: an inner transaction() joins the outer one."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield self
            return
        async with self._lock:
            self._owner = task
            try:
                # BEGIN and COMMIT are inside the try: a task cancelled while BEGIN is on its way, or a
                # COMMIT that fails (a deferred constraint, a full disk), must not leave the shared
                # connection in an open transaction that every later BEGIN would trip over.
                with self._translated():
                    await self._db.execute("BEGIN IMMEDIATE")
                yield self
                with self._translated():
                    await self._db.execute("COMMIT")
            except BaseException:
                # Statements run in order on aiosqlite's thread, so this comes after a cancelled BEGIN.
                with contextlib.suppress(sqlite3.Error):  # "no transaction is active", a full disk
                    await self._db.execute("ROLLBACK")
                raise
            finally:
                self._owner = None

    # Statement helpers. A write outside transaction() runs as a transaction of its own, so it can never
    # slip into (and be rolled back with) another coroutine's open transaction on the shared connection.

    async def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        async with self.transaction():
            with self._translated():
                async with self._db.execute(sql, tuple(args)) as cursor:
                    return int(cursor.rowcount)

    async def insert(self, sql: str, args: Iterable[Any] = ()) -> int:
        """Run one INSERT; returns the new row's id."""
        async with self.transaction():
            with self._translated():
                async with self._db.execute(sql, tuple(args)) as cursor:
                    return int(cursor.lastrowid or 0)

    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # One call on aiosqlite's thread: the statement runs to its end before another coroutine's statement
        # (e.g. a BEGIN IMMEDIATE) can run on this connection. Stepped in two calls, a read left open there
        # holds an old snapshot, and the BEGIN fails at once with "database is locked" when another
        # connection has written meanwhile (SQLITE_BUSY_SNAPSHOT: the busy timeout does not apply).
        with self._translated():
            return list(await self._db.execute_fetchall(sql, tuple(args)))

    async def fetchone(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def scalar(self, sql: str, args: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, args)
        return None if row is None else row[0]

    async def _scalar_raw(self, sql: str) -> Any:
        async with self._db.execute(sql) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]


def _check_path(path: Path) -> None:
    """The folder and file problems SQLite would only call "unable to open database file"."""
    problem = make_folder(path.parent)
    if problem is not None:
        raise StoreError(f"the database {path}: {problem}")
    if path.exists() and not path.is_file():
        raise StoreError(f"{path} is not a file (the database must be a regular file)")


def _writable(path: Path) -> bool:
    """Whether the database file and its folder (for the -wal and -shm files) can be written."""
    try:
        if path.exists() and not os.access(path, os.W_OK):
            return False
        probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
        probe.touch()
        probe.unlink()
    except OSError:
        return False
    return True


def _open_error(path: Path, error: sqlite3.Error) -> StoreError:
    code = _code(error)
    if code in _BUSY:
        return StoreError(
            f"{path} is locked by another program (waited {Store.BUSY_TIMEOUT:g} s): close it and start again"
        )
    cannot_write = (code in _CANNOT_OPEN or code == sqlite3.SQLITE_IOERR) and not _writable(path)
    if code == sqlite3.SQLITE_READONLY or cannot_write:
        if not path.exists():
            return StoreError(f"cannot create the database {path}: its folder is read-only")
        return StoreError(f"{path} is read-only: the bot must be able to write to it and to its folder")
    if code == sqlite3.SQLITE_FULL:
        return StoreError(f"cannot open {path}: the disk is full")
    if code in _DAMAGED:
        return StoreError(f"{path} is damaged ({error}): restore it from a backup (e.g. {path.name}.v<N>.bak)")
    if code in _NOT_A_DATABASE:
        return StoreError(f"{path} is not an SQLite database (file is not a database)")
    return StoreError(f"cannot open the database {path}: {error}")
