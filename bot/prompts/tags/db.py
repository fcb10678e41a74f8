"""The tag database file: its SQLite schema, writing a parsed list into it, and loading it back.

Every SQL statement about tags lives here. Failures become ``TagImportError``/``TagDatabaseError``
whose message says which of these it is, and what to do: the file is locked by another process,
read-only, not a database (or corrupt), another schema version, or a database that holds other
tables (the bot's main database, say) and must not be overwritten.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.prompts.tags.model import (
    Tag,
    TagCategory,
    TagDatabaseBusy,
    TagDatabaseError,
    TagImportError,
    normalize,
)

# Bump whenever the tables change: an older database is then refused with a "re-import" message.
# (Search keys are normalized at open, not stored, so changing ``normalize`` needs no re-import.)
SCHEMA_VERSION = 1
# The version of ``normalize`` the optional ``tag_keys`` table was written with (tag_meta "key_version").
# Bump it when ``normalize`` changes: a table with another version is ignored (lookups then use the
# in-memory index), never trusted. Databases imported before the table existed simply lack it.
KEY_VERSION = "1"
# Seconds to wait for another process's lock before giving up with a "locked" message.
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE tag_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE tags (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    category   INTEGER NOT NULL CHECK (category IN (0, 1, 3, 4, 5)),
    post_count INTEGER NOT NULL CHECK (post_count >= 0)
);  -- plus UNIQUE INDEX tags_by_name (name), created after the bulk insert
CREATE TABLE tag_aliases (
    tag_id   INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    alias    TEXT NOT NULL,
    PRIMARY KEY (tag_id, position)
) WITHOUT ROWID;
CREATE TABLE tag_keys (
    key    TEXT PRIMARY KEY,  -- normalize(name or alias): what ``lookup`` finds without loading the list
    tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE
) WITHOUT ROWID;
"""
_TABLES = ("tag_keys", "tag_aliases", "tags", "tag_meta")
# What a usable database must have (``tag_keys`` is optional: older imports lack it).
_REQUIRED_TABLES = ("tag_aliases", "tags", "tag_meta")
# The largest post count SQLite's INTEGER holds.
MAX_POST_COUNT = 2**63 - 1

# A row as written: (name, category, post_count, aliases), in rank order (most posts first).
TagRow = tuple[str, TagCategory, int, Sequence[str]]


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds a lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in str(exc)


def describe_sqlite_error(exc: sqlite3.Error, db_path: Path) -> str:
    """What went wrong with ``db_path``, for a human: locked, read-only, not a database, or other."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    text = str(exc)
    if is_busy(exc):
        return (
            f"tag database {db_path} is locked by another process (still busy after {BUSY_TIMEOUT:g} s); "
            "close whatever holds it (another animebot, a database browser) and try again"
        )
    if code == sqlite3.SQLITE_READONLY or "readonly" in text:
        return f"tag database {db_path} is read-only ({text}); make the file and its folder writable"
    if code == sqlite3.SQLITE_CANTOPEN or code == sqlite3.SQLITE_PERM or code == sqlite3.SQLITE_AUTH:
        return f"cannot open tag database {db_path} ({text}); check that it exists and may be read"
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or "not a database" in text or "malformed" in text:
        return f"{db_path} is not a SQLite database or is corrupt ({text})"
    if code == sqlite3.SQLITE_FULL:
        return f"the disk holding tag database {db_path} is full ({text})"
    if code == sqlite3.SQLITE_IOERR:
        return f"reading or writing tag database {db_path} failed: I/O error ({text})"
    return f"tag database {db_path}: {text}"


def _other_tables(conn: sqlite3.Connection) -> list[str]:
    names = (r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    return sorted(n for n in names if n not in _TABLES and not n.startswith("sqlite_"))


def write_tags(db_path: Path, rows: Sequence[TagRow], meta: Mapping[str, str]) -> int:
    """Replace the tag tables of ``db_path`` (created if missing) with ``rows``; returns the alias count.

    The whole replacement is one SQLite transaction: readers see the old list or the new one,
    never a mix, and any failure leaves the previous content intact. A file that is not a SQLite
    database, or a database with tables of its own (the bot's main database), is never touched.
    """
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TagImportError(f"cannot create the folder for {db_path}: {exc.strerror or exc}") from None
    if db_path.exists() and not db_path.is_file():
        raise TagImportError(f"{db_path} exists and is not a file")

    n_aliases = 0
    try:
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.Error as exc:
        raise TagImportError(describe_sqlite_error(exc, db_path)) from None
    try:
        try:
            others = _other_tables(conn)
        except sqlite3.Error as exc:
            if is_busy(exc):
                raise TagDatabaseBusy(describe_sqlite_error(exc, db_path)) from None
            raise TagImportError(f"{describe_sqlite_error(exc, db_path)}; refusing to overwrite it") from None
        if others:
            raise TagImportError(
                f"{db_path} is a SQLite database with other tables ({', '.join(others[:5])}), not a tag "
                "database; refusing to overwrite it. Give the tag database a file of its own "
                '([tags] database = "tags.sqlite")'
            )
        conn.execute("PRAGMA cache_size = -65536")  # 64 MB: the whole list fits, no spilling
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in _TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)  # not executescript(): that would COMMIT first
            conn.executemany(
                "INSERT INTO tags (id, name, category, post_count) VALUES (?, ?, ?, ?)",
                ((i, name, int(category), count) for i, (name, category, count, _) in enumerate(rows, 1)),
            )
            # Built after the bulk insert: about twice as fast as maintaining it row by row.
            conn.execute("CREATE UNIQUE INDEX tags_by_name ON tags (name)")
            alias_rows = [(i, pos, a) for i, row in enumerate(rows, 1) for pos, a in enumerate(row[3])]
            n_aliases = len(alias_rows)
            conn.executemany("INSERT INTO tag_aliases (tag_id, position, alias) VALUES (?, ?, ?)", alias_rows)
            conn.executemany("INSERT INTO tag_keys (key, tag_id) VALUES (?, ?)", _lookup_keys(rows).items())
            full_meta = {
                "schema_version": str(SCHEMA_VERSION),
                **meta,
                "alias_count": str(n_aliases),
                "key_version": KEY_VERSION,
            }
            conn.executemany("INSERT INTO tag_meta (key, value) VALUES (?, ?)", full_meta.items())
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        if is_busy(exc):
            raise TagDatabaseBusy(describe_sqlite_error(exc, db_path)) from None
        raise TagImportError(f"writing tag database {db_path} failed: {describe_sqlite_error(exc, db_path)}") from None
    finally:
        conn.close()
    return n_aliases


def _lookup_keys(rows: Sequence[TagRow]) -> dict[str, int]:
    """{normalized name or alias: tag id}, with ``TagDatabase.lookup``'s precedence: a name beats an
    alias, and between equal keys the tag with more posts (rows are in rank order) wins."""
    keys: dict[str, int] = {}
    for i, row in enumerate(rows, 1):
        keys.setdefault(normalize(row[0]), i)
    for i, row in enumerate(rows, 1):
        for alias in row[3]:
            key = normalize(alias)
            if key:
                keys.setdefault(key, i)
    return keys


_HINT = "run the tag import (import_csv) to create it"


def _open_checked(db_path: Path) -> tuple[sqlite3.Connection, set[str]]:
    """A read-only connection to a tag database of this schema version, and its table names."""
    hint = _HINT
    if not db_path.is_file():
        raise TagDatabaseError(f"tag database not found: {db_path}; {hint}")
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        raise TagDatabaseError(describe_sqlite_error(exc, db_path)) from None
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            message = describe_sqlite_error(exc, db_path)
            if is_busy(exc):
                raise TagDatabaseBusy(message) from None
            if "not a SQLite database" in message:
                message += f"; {hint}"
            raise TagDatabaseError(message) from None
        if not set(_REQUIRED_TABLES) <= have:
            raise TagDatabaseError(f"{db_path} holds no tag list; {hint}")
        if version != SCHEMA_VERSION:
            raise TagDatabaseError(
                f"{db_path} has tag schema version {version}, this code needs {SCHEMA_VERSION}; re-import the tag CSV"
            )
    except BaseException:
        conn.close()
        raise
    return conn, have


def _read_error(exc: sqlite3.Error, db_path: Path) -> TagDatabaseError:
    message = describe_sqlite_error(exc, db_path)
    if is_busy(exc):
        return TagDatabaseBusy(message)
    if "not a SQLite database" in message:  # damaged past the header
        message = f"tag database {db_path} is corrupt ({exc}); re-import the CSV"
    return TagDatabaseError(message)


def check(db_path: Path) -> tuple[dict[str, str], bool]:
    """The meta table of a usable tag database (the same checks as ``load``, in milliseconds), and
    whether it has a ``tag_keys`` table that ``lookup_keys`` may use."""
    conn, have = _open_checked(db_path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM tag_meta"))
    except sqlite3.Error as exc:
        raise _read_error(exc, db_path) from None
    finally:
        conn.close()
    return meta, "tag_keys" in have and meta.get("key_version") == KEY_VERSION


def lookup_keys(db_path: Path, keys: Sequence[str]) -> dict[str, Tag]:
    """{key: Tag} for the normalized ``keys`` found in the ``tag_keys`` table (``check`` said it is usable)."""
    categories = {int(c): c for c in TagCategory}
    found: dict[str, Tag] = {}
    conn, _ = _open_checked(db_path)
    try:
        rows: list[tuple[str, int, str, int, int]] = []
        unique = sorted(set(keys))
        for start in range(0, len(unique), 500):  # under SQLite's limit on host parameters
            chunk = unique[start : start + 500]
            rows += conn.execute(
                "SELECT k.key, t.id, t.name, t.category, t.post_count FROM tag_keys k JOIN tags t ON t.id = k.tag_id "
                f"WHERE k.key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
        ids = sorted({row[1] for row in rows})
        aliases: dict[int, list[str]] = {}
        for start in range(0, len(ids), 500):
            chunk_ids = ids[start : start + 500]
            for tag_id, alias in conn.execute(
                f"SELECT tag_id, alias FROM tag_aliases WHERE tag_id IN ({','.join('?' * len(chunk_ids))}) "
                "ORDER BY tag_id, position",
                chunk_ids,
            ):
                aliases.setdefault(tag_id, []).append(alias)
        for key, tag_id, name, cat, count in rows:
            found[key] = Tag(name, categories[cat], count, tuple(aliases.get(tag_id, ())))
    except sqlite3.Error as exc:
        raise _read_error(exc, db_path) from None
    except (KeyError, TypeError) as exc:
        raise TagDatabaseError(f"tag database {db_path} is corrupt ({exc!r}); re-import the CSV") from None
    finally:
        conn.close()
    return found


def load(db_path: Path) -> tuple[list[Tag], dict[str, str]]:
    """The tags written by ``write_tags``, most posts first, and the meta table."""
    conn, _ = _open_checked(db_path)
    try:
        try:
            meta = dict(conn.execute("SELECT key, value FROM tag_meta"))
            aliases: dict[int, list[str]] = {}
            alias_rows = conn.execute("SELECT tag_id, alias FROM tag_aliases ORDER BY tag_id, position")
            for tag_id, alias in alias_rows:
                aliases.setdefault(tag_id, []).append(alias)
            categories = {int(c): c for c in TagCategory}
            tags = [
                Tag(name, categories[cat], count, tuple(aliases.get(tag_id, ())))
                for tag_id, name, cat, count in conn.execute(
                    "SELECT id, name, category, post_count FROM tags ORDER BY post_count DESC, name"
                )
            ]
        except sqlite3.Error as exc:
            message = describe_sqlite_error(exc, db_path)
            if is_busy(exc):
                raise TagDatabaseBusy(message) from None
            if "not a SQLite database" in message:  # damaged past the header
                message = f"tag database {db_path} is corrupt ({exc}); re-import the CSV"
            raise TagDatabaseError(message) from None
        except (KeyError, TypeError) as exc:
            raise TagDatabaseError(f"tag database {db_path} is corrupt ({exc!r}); re-import the CSV") from None
    finally:
        conn.close()
    return tags, meta
