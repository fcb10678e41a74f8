"""SQL lives in the repositories: jobs (with images and deliveries), settings, audit, quotas; the store and
the migrations run it. Frontends (cogs, bot/discord_app, the CLI) use the service's methods, never the
store or the queue's repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SQL = re.compile(
    r"\b(?:SELECT\s+[\w*(]|INSERT\s+INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(?:TABLE|INDEX)\b)"
)
REPOSITORIES = {
    "bot/core/jobs.py",
    "bot/core/settings.py",
    "bot/core/audit.py",
    "bot/core/quotas.py",
    "bot/core/safety_settings.py",  # each server's rating-check settings (guild_safety)
    "bot/core/announced.py",  # the positions last shown to followed jobs (a TEMP table) and the pass that reads them
    "bot/core/store.py",
    "bot/core/migrations.py",
    "bot/prompts/tags/db.py",  # the tag database: its own file, schema and reader
}
FRONTENDS = ("cogs", "bot/discord_app", "bot/cli.py")
REACHING_IN = re.compile(r"\.store\b|\.queue\.jobs\b|service\.queue\b|\._store\b")


def sources(*roots: str) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        path = ROOT / root
        found.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return found


def test_sql_only_in_the_repositories() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sources("bot", "cogs")
        if str(path.relative_to(ROOT)) not in REPOSITORIES
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if SQL.search(line)
    ]
    assert offenders == []


def test_frontends_use_the_service_not_its_store_or_queue() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sources(*FRONTENDS)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if REACHING_IN.search(line)
    ]
    assert offenders == []


def test_the_checks_see_what_they_look_for() -> None:
    """The patterns match the kinds of line they must refuse (so the two tests above can fail)."""
    assert SQL.search('await store.scalar("SELECT value FROM bot_state WHERE key = ?", (KEY,))')
    assert SQL.search('"INSERT INTO deliveries (job_id) VALUES (?)"')
    assert REACHING_IN.search("job = await bot.service.queue.jobs.get(job_id)")
    assert REACHING_IN.search("value = await self.service.store.scalar(")
