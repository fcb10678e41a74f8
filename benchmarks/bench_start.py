"""How long GenerationService.start() stalls the event loop (run by hand; prints figures, asserts nothing).

A probe task sleeps 10 ms at a time while the service starts with the built-in tiny models, in a fresh
interpreter (so torch and diffusers are imported by the start, as in `animebot run`); the worst overshoot
is the longest the loop could not run (a connected bot's heartbeat, an interaction)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot.config import load_config  # noqa: E402
from bot.core.service import GenerationService  # noqa: E402


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text('data_dir = "data"\n', encoding="utf-8")
        worst = 0.0
        stop = False

        async def probe() -> None:
            nonlocal worst
            while not stop:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                worst = max(worst, time.perf_counter() - before - 0.01)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        service = GenerationService(load_config(config))
        started = time.perf_counter()
        await service.start()
        took = time.perf_counter() - started
        stop = True
        await task
        await service.close()
    print(f"service.start(): {took:.2f} s; worst event-loop stall during it: {worst * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
