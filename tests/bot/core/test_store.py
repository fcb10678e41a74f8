"""The SQLite store: migrations from an empty database (and the backup before an upgrade), pragmas,
transactions, and the faults: locked by another process, damaged, read-only, not a database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.core.errors import StoreBusy
from bot.core.migrations import MIGRATIONS
from bot.core.store import Store, StoreError
from tests.bot.core.faults import DatabaseLocker, read_only

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
        assert (job.kind, job.parent_id) == ("txt2img", None)  # migration 8's defaults for older rows
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


# -- faults: each gets its own one-line message; a busy store raises StoreBusy, then works again -----


async def test_a_database_locked_by_another_process_raises_store_busy_then_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Store, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "a.sqlite"
    store = await Store.open(path)
    try:
        with DatabaseLocker(path) as locker:
            with pytest.raises(StoreBusy, match="locked by another program"):
                await store.execute("INSERT INTO bot_state (key, value) VALUES ('a', '1')")
            assert await store.scalar("SELECT COUNT(*) FROM bot_state") == 0  # reads still work (WAL)
            locker.release()
            await store.execute("INSERT INTO bot_state (key, value) VALUES ('a', '1')")  # no transaction left open
        assert await store.scalar("SELECT value FROM bot_state") == "1"
    finally:
        await store.close()


async def test_a_database_locked_exclusively_at_open_is_named_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Store, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "a.sqlite"
    with sqlite3.connect(path) as raw:  # a rollback-journal database (as another tool may leave it)
        raw.execute("CREATE TABLE t (x)")
    with DatabaseLocker(path, "EXCLUSIVE"), pytest.raises(StoreError, match="is locked by another program") as error:
        await Store.open(path)
    assert "\n" not in str(error.value)


def corrupt(path: Path) -> None:
    """Overwrite the middle pages of a database (a bad disk, a torn copy)."""
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 4096
    data[4096 * 4 : 4096 * 12] = b"\x55" * (4096 * 8)
    path.write_bytes(bytes(data))


async def test_a_damaged_database_is_named_damaged_at_open(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    store = await Store.open(path)
    async with store.transaction():
        for _ in range(400):
            sql = "INSERT INTO audit_log (at, actor_id, action, detail) VALUES (0, 'x', 'y', ?)"
            await store.execute(sql, ("z" * 500,))
    await store.close()  # the last connection checkpoints the WAL into the file
    corrupt(path)
    with pytest.raises(StoreError, match=r"is damaged .*restore it from a backup") as error:
        await Store.open(path)
    assert "\n" not in str(error.value) and "not a database" not in str(error.value)


async def test_a_read_only_database_is_named_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    store = await Store.open(folder / "animebot.sqlite")
    await store.close()
    with read_only(folder), pytest.raises(StoreError, match="is read-only") as error:
        await Store.open(folder / "animebot.sqlite")
    assert "not a database" not in str(error.value)


async def test_a_database_in_a_read_only_folder_cannot_be_created(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with read_only(folder), pytest.raises(StoreError, match="read-only"):
        await Store.open(folder / "animebot.sqlite")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is not a file"),
        (lambda p: p.parent.rmdir() or p.parent.write_text("x"), "data exists and is not a folder"),
    ],
)
async def test_a_database_path_that_cannot_be_a_database_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "data" / "animebot.sqlite"
    path.parent.mkdir()
    make(path)
    with pytest.raises(StoreError, match=message):
        await Store.open(path)


async def test_an_upgrade_backs_the_database_up_first(tmp_path: Path) -> None:
    path = tmp_path / "animebot.sqlite"
    with sqlite3.connect(path) as raw:  # as release 2 left it, with a user
        raw.executescript(MIGRATIONS[0] + MIGRATIONS[1])
        raw.execute("INSERT INTO users (id, created_at) VALUES ('discord:1', 0)")
        raw.execute("PRAGMA user_version = 2")
    store = await Store.open(path)
    await store.close()
    backup = tmp_path / "animebot.sqlite.v2.bak"
    assert backup.is_file()
    with sqlite3.connect(backup) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        assert raw.execute("SELECT id FROM users").fetchall() == [("discord:1",)]
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".part")) == []
    again = await Store.open(path)  # up to date: no new backup
    await again.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name) == ["animebot.sqlite.v2.bak"]


async def test_a_new_database_is_not_backed_up(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "animebot.sqlite")
    await store.close()
    assert not [p for p in tmp_path.iterdir() if ".bak" in p.name]
