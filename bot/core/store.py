"""The SQLite database (aiosqlite): connection, schema migrations and transactions.

One connection, WAL journal, foreign keys on. Every write goes through `transaction()`, which holds
an asyncio lock for its whole duration: aiosqlite runs statements one at a time on its own thread,
but without the lock another coroutine's statements could land inside our transaction between two
awaits. With it, check-then-write sequences (quotas) are atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from bot.core.migrations import MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The database cannot be used (newer schema, not a database...)."""


class Store:
    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None  # the task inside transaction()

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
        connection.row_factory = sqlite3.Row
        store = cls(connection, path)
        try:
            await store._setup()
        except BaseException:
            await connection.close()
            raise
        return store

    async def _setup(self) -> None:
        try:
            await self._db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a database this bot can use: {e}") from None
        await self._db.execute("PRAGMA foreign_keys = ON")
        await self._db.execute("PRAGMA synchronous = NORMAL")
        await self._db.execute("PRAGMA busy_timeout = 5000")
        await self.migrate()

    async def migrate(self) -> None:
        version = await self.scalar("PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this bot's {SCHEMA_VERSION}: upgrade the bot"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[number - 1]
            # executescript commits first; the whole migration and its version bump are one transaction.
            await self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    async def close(self) -> None:
        await self._db.close()

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
                await self._db.execute("BEGIN IMMEDIATE")
                yield self
                await self._db.execute("COMMIT")
            except BaseException:
                # Statements run in order on aiosqlite's thread, so this comes after a cancelled BEGIN.
                with contextlib.suppress(sqlite3.OperationalError):  # "no transaction is active"
                    await self._db.execute("ROLLBACK")
                raise
            finally:
                self._owner = None

    # Statement helpers. A write outside transaction() runs as a transaction of its own, so it can never
    # slip into (and be rolled back with) another coroutine's open transaction on the shared connection.

    async def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        async with self.transaction(), self._db.execute(sql, tuple(args)) as cursor:
            return int(cursor.rowcount)

    async def insert(self, sql: str, args: Iterable[Any] = ()) -> int:
        """Run one INSERT; returns the new row's id."""
        async with self.transaction(), self._db.execute(sql, tuple(args)) as cursor:
            return int(cursor.lastrowid or 0)

    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # One call on aiosqlite's thread: the statement runs to its end before another coroutine's statement
        # (e.g. a BEGIN IMMEDIATE) can run on this connection. Stepped in two calls, a read left open there
        # holds an old snapshot, and the BEGIN fails at once with "database is locked" when another
        # connection has written meanwhile (SQLITE_BUSY_SNAPSHOT: the busy timeout does not apply).
        return list(await self._db.execute_fetchall(sql, tuple(args)))

    async def fetchone(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def scalar(self, sql: str, args: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, args)
        return None if row is None else row[0]
