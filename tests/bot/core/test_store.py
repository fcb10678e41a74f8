"""The SQLite store: migrations from an empty database, pragmas, transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.core.migrations import MIGRATIONS
from bot.core.store import Store, StoreError

TABLES = {"users", "jobs", "images", "deliveries", "usage", "quota_overrides", "guild_settings", "audit_log",
          "bot_state"}


async def test_migrates_an_empty_database(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "db" / "animebot.sqlite")
    try:
        names = {r["name"] for r in await store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert names >= TABLES
        assert await store.scalar("PRAGMA user_version") == len(MIGRATIONS)
        assert await store.scalar("PRAGMA journal_mode") == "wal"
        assert await store.scalar("PRAGMA foreign_keys") == 1
    finally:
        await store.close()
    again = await Store.open(tmp_path / "db" / "animebot.sqlite")  # already migrated: nothing to do
    await again.close()


async def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.sqlite")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await store.execute(
                "INSERT INTO usage (user_id, job_id, images, at) VALUES ('nobody', 12345, 1, 0)"
            )
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer than this bot"):
        await Store.open(path)


async def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a database"):
        await Store.open(path)


async def test_failed_transaction_rolls_back_and_others_wait(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.sqlite")
    try:
        with pytest.raises(RuntimeError):
            async with store.transaction():
                await store.execute("INSERT INTO bot_state (key, value) VALUES ('a', '1')")
                raise RuntimeError("abort")
        assert await store.scalar("SELECT COUNT(*) FROM bot_state") == 0

        order: list[str] = []

        async def slow() -> None:
            async with store.transaction():
                order.append("slow begins")
                await store.execute("INSERT INTO bot_state (key, value) VALUES ('b', '1')")
                await asyncio.sleep(0.05)
                order.append("slow ends")

        async def quick() -> None:
            await asyncio.sleep(0.01)
            await store.execute("INSERT INTO bot_state (key, value) VALUES ('c', '1')")  # waits its turn
            order.append("quick")

        await asyncio.gather(slow(), quick())
        assert order == ["slow begins", "slow ends", "quick"]
    finally:
        await store.close()


async def test_a_database_of_an_older_release_is_upgraded_and_keeps_its_jobs(tmp_path: Path) -> None:
    from bot.core.jobs import JobRepository

    path = tmp_path / "a.sqlite"
    with sqlite3.connect(path) as raw:  # as release 1 left it: one job, no locale column
        raw.executescript(MIGRATIONS[0])
        raw.execute("INSERT INTO users (id, created_at) VALUES ('discord:1', 0)")
        raw.execute(
            "INSERT INTO jobs (owner_id, channel_id, model, request, params, image_count, state, created_at) "
            "VALUES ('discord:1', '2', 'tiny', ?, ?, 1, 'queued', 0)",
            (
                '{"model": "tiny", "choices": {"prompt": "1girl"}}',
                '{"prompt": "1girl", "negative_prompt": "", "width": 64, "height": 64, "steps": 1, "cfg": 5.0,'
                ' "sampler": "euler_a", "seeds": [1]}',
            ),
        )
        raw.execute("PRAGMA user_version = 1")
    store = await Store.open(path)
    try:
        assert await store.scalar("PRAGMA user_version") == len(MIGRATIONS)
        job = await JobRepository(store).get(1)
        assert job is not None and job.request.choices.prompt == "1girl" and job.locale is None
    finally:
        await store.close()


async def test_a_transaction_cancelled_while_it_begins_leaves_no_open_transaction(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.sqlite")
    try:
        task = asyncio.create_task(store.execute("INSERT INTO bot_state (key, value) VALUES ('a', '1')"))
        await asyncio.sleep(0)  # the task has sent BEGIN IMMEDIATE and waits for it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.execute("INSERT INTO bot_state (key, value) VALUES ('b', '1')")  # not "within a transaction"
        assert [r["key"] for r in await store.fetchall("SELECT key FROM bot_state")] == ["b"]
    finally:
        await store.close()


async def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.sqlite")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            async with store.transaction():
                await store.execute("PRAGMA defer_foreign_keys = ON")  # the foreign key is checked at COMMIT
                await store.execute("INSERT INTO usage (user_id, job_id, images, at) VALUES ('nobody', 1, 1, 0)")
        await store.execute("INSERT INTO bot_state (key, value) VALUES ('b', '1')")
        assert await store.scalar("SELECT COUNT(*) FROM usage") == 0
    finally:
        await store.close()
