"""The positions last shown to the jobs someone follows, kept where SQL can compare them: a TEMP table on the
store's one connection (gone with it; nothing is written to the database file). Each followed job has the window
of exact positions for which what it shows stays the same (bot/core/positions.py), so one pass along the queue's
order returns only the jobs whose shown position changed, and Python never looks at the others.

The pass walks the order in pages (keyset on (queue_rank, id), PAGE_ROWS rows each), one statement per page, and
rests as long as each page took before the next: an acknowledgement's statements (a dozen, one after the other on
the one connection) run while it rests, instead of each waiting behind a page (with 5,000-row pages and no rest,
an acknowledgement at 100,000 waiting took up to 184 ms: benchmarks/bench_scale.py). Positions read page by page are
exact to within the jobs that came or went during the pass: the windows absorb that, and the next pass corrects
it (the front of the queue, where every move shows, is read separately and exactly: JobRepository.front).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping

from bot.core.positions import window
from bot.core.store import Store

# Rows per statement of the pass. A page's cost grows with how far along the order it starts (at 100,000 waiting
# the pass's database time is 209 ms in pages of 5,000, 492 ms in pages of 2,500, 938 ms in pages of 1,000:
# benchmarks/bench_positions.py); smaller pages let an acknowledgement's statements through sooner.
PAGE_ROWS = 2500
UNKNOWN = (1, 0)  # the window of a job whose shown position is not known yet: every position is a change


class AnnouncedPositions:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self) -> None:
        await self.store.execute(
            "CREATE TEMP TABLE IF NOT EXISTS announced_positions"
            " (job_id INTEGER PRIMARY KEY, low INTEGER NOT NULL, high INTEGER NOT NULL)"
        )
        await self.store.execute("DELETE FROM temp.announced_positions")

    async def write(self, shown: Mapping[int, int | None], gone: Iterable[int] = ()) -> None:
        """Record what each job of `shown` shows now (None: not known yet), and forget the jobs of `gone`; one
        transaction, two statements whatever the number of jobs."""
        rows = [[job_id, *(UNKNOWN if value is None else window(value))] for job_id, value in shown.items()]
        forgotten = list(gone)
        async with self.store.transaction():
            if forgotten:
                await self.store.execute(
                    "DELETE FROM temp.announced_positions WHERE job_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(forgotten),),
                )
            if rows:
                await self.store.execute(
                    "INSERT OR REPLACE INTO temp.announced_positions (job_id, low, high)"
                    " SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?)",
                    (json.dumps(rows),),
                )

    async def changed(self, page_rows: int = PAGE_ROWS) -> dict[int, int]:
        """{job: exact position} of the followed jobs whose position left the window of what they show, read
        along the whole order a page at a time, resting as long as each page took (the database's other users go
        first meanwhile)."""
        changed: dict[int, int] = {}
        rank, last_id, offset = -1, -1, 0
        while True:
            started = time.perf_counter()
            rows = await self.store.fetchall(
                "WITH page AS MATERIALIZED ("
                " SELECT id, queue_rank, ?3 + ROW_NUMBER() OVER (ORDER BY queue_rank, id) AS position FROM ("
                "  SELECT id, queue_rank FROM jobs INDEXED BY jobs_waiting_in_order WHERE state = 'queued'"
                "  AND (queue_rank, id) > (?1, ?2) ORDER BY queue_rank, id LIMIT ?4))"
                " SELECT p.id, p.position, p.queue_rank, 1 AS changed FROM page p"
                " JOIN temp.announced_positions a ON a.job_id = p.id WHERE p.position NOT BETWEEN a.low AND a.high"
                " UNION ALL"
                " SELECT * FROM (SELECT id, position, queue_rank, 0 FROM page ORDER BY position DESC LIMIT 1)",
                (rank, last_id, offset, page_rows),
            )
            last = None
            for row in rows:
                if row["changed"]:
                    changed[int(row["id"])] = int(row["position"])
                else:
                    last = row
            if last is None or int(last["position"]) - offset < page_rows:
                return changed
            rank, last_id, offset = int(last["queue_rank"]), int(last["id"]), int(last["position"])
            await asyncio.sleep(time.perf_counter() - started)
