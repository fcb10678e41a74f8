"""Fuzzing /generate through the real command tree (simcord): random option values, hostile text in every
string option. Each call either answers with an ephemeral message from the catalog and queues nothing, or
queues exactly one job and says so publicly; never the generic error. Autocomplete gets random text too
and answers within Discord's limits. A fixed seed in CI; see tests/fuzz.py
for the long mode (ANIMEBOT_FUZZ_LONG=1: more rounds, a new seed each run, printed; replay a failure with
ANIMEBOT_FUZZ_SEED=<seed>)."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import pytest
import simcord

from bot.core.messages import render
from tests.cogs.conftest import BotFactory, server
from tests.fuzz import LONG, NASTY, WORDS, count

DISCORD_INT = 2**53  # Discord's integer options are within ±2^53
GENERIC = render("generic_error", "en")


def text(rng: random.Random, longest: int = 80) -> str:
    pieces: list[str] = []
    for _ in range(rng.randint(0, 8)):
        kind = rng.random()
        if kind < 0.4:
            pieces.append(rng.choice(WORDS))
        elif kind < 0.8:
            pieces.append("".join(rng.choice(NASTY) for _ in range(rng.randint(1, 6))))
        else:
            pieces.append("".join(chr(rng.randint(32, 0x2FFFF)) for _ in range(rng.randint(1, 6))))
        pieces.append(rng.choice([", ", ",", " ", ""]))
    out = "".join(pieces)[:longest]
    # Discord never sends surrogates (its JSON is UTF-8); the CLI does, and is fuzzed in tests/bot.
    return "".join(ch for ch in out if not "\ud800" <= ch <= "\udfff")


def options(rng: random.Random) -> dict[str, Any]:
    opts: dict[str, Any] = {"prompt": text(rng) or rng.choice(["1girl", " ", "@"])}
    if rng.random() < 0.05:
        opts["prompt"] = rng.choice(WORDS) * rng.randint(100, 400)  # past the length limit, up to 6,000
    makers: dict[str, Any] = {
        "negative": lambda: text(rng, 200) if rng.random() < 0.9 else "x" * rng.randint(2001, 6000),
        "quality": lambda: rng.choice(["best", "masterpiece", "worst", text(rng, 30)]),
        "year": lambda: rng.choice(["2019", "newest", "1850", "year 2020", "９９９９", text(rng, 20)]),
        "rating": lambda: rng.choice(["general", "sensitive", "explicit", "ｅ", "nsfw", text(rng, 20)]),
        "artist": lambda: rng.choice(["artist_00", "@artist_01, artist_02", "@", text(rng, 60), "a" * 150]),
        "aspect": lambda: rng.choice(["1:1", "13:19", "16:9", "0:0", "9" * 400 + ":1", text(rng, 12)]),
        "seed": lambda: rng.choice([0, 2**32 - 1, 2**32, -1, rng.randint(-DISCORD_INT, DISCORD_INT)]),
        "steps": lambda: rng.choice([1, 2, 0, 151, rng.randint(-DISCORD_INT, DISCORD_INT)]),
        "cfg": lambda: rng.choice([0.0, 5.5, 30.0, -0.5, 1e15, rng.uniform(-100, 100)]),
        "count": lambda: rng.choice([1, 2, 8, 0, 9, rng.randint(-DISCORD_INT, DISCORD_INT)]),
    }
    for name, make in makers.items():
        if rng.random() < 0.35:
            opts[name] = make()
    if "steps" not in opts or rng.random() < 0.5:
        opts["steps"] = 1
    return opts


async def test_fuzz_generate_options(make_bot: BotFactory, caplog: pytest.LogCaptureFixture) -> None:
    seed = int(os.environ.get("ANIMEBOT_FUZZ_SEED") or (random.randrange(2**32) if LONG else 8))
    print(f"fuzz seed {seed}")
    rng = random.Random(seed)
    bot = await make_bot('[discord]\nbanned_words = ["forbidden"]\n')
    async with simcord.run(bot, settle_timeout=60) as env:
        await bot.service.queue.set_paused(True)  # queued jobs wait: the fuzz checks requests, not images
        channel, (alice,) = server(env, "alice")
        queued = refused = 0
        for _ in range(count(40, factor=20)):
            opts = options(rng)
            before = await bot.service.store.scalar("SELECT COUNT(*) FROM jobs")
            result = await alice.slash(channel, "generate", **opts)
            after = await bot.service.store.scalar("SELECT COUNT(*) FROM jobs")
            assert result.response is not None, (seed, opts)
            content = result.response.content
            assert GENERIC not in content, (seed, opts)
            if result.ephemeral:
                refused += 1
                assert after == before, (seed, opts, content)
            else:
                queued += 1
                assert after == before + 1 and content.startswith(f"#{after} queued"), (seed, opts, content)
            option = rng.choice(["quality", "year", "rating", "artist", "aspect"])
            choices = await alice.autocomplete(channel, "generate", option, text(rng, 100))
            assert len(choices) <= 25 and all(1 <= len(c["name"]) <= 100 for c in choices), (seed, option)
            assert all(1 <= len(c["value"]) <= 100 for c in choices), (seed, option)
        print(f"{queued} queued, {refused} refused")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], (seed, errors)  # an autocomplete or command error is logged, not answered
        assert queued and refused  # the generator reaches both outcomes
