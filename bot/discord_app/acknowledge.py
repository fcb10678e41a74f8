"""Answering Discord in time when the database is slow. Discord drops an interaction not acknowledged
within 3 seconds; a write can wait up to the store's busy timeout (another process holding a write
transaction) and then raise StoreBusy. So a submit that has not finished after ACK_AFTER seconds is
acknowledged first (deferred: the user sees "thinking…"), and a busy store is tried again, with growing
pauses, for up to BUSY_PATIENCE seconds (well inside the 15 minutes an interaction token lives) before the
user is told that nothing was queued. StoreBusy promises that nothing was written, so a retry never
queues a request twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import discord

from bot.core.errors import StoreBusy, UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

ACK_AFTER = 1.5  # seconds a submit may take before the interaction is deferred (Discord allows 3)
BUSY_PATIENCE = 600.0  # seconds to keep trying a busy store
BUSY_FIRST_DELAY = 0.5  # the first pause between two tries; it doubles up to BUSY_MAX_DELAY
BUSY_MAX_DELAY = 15.0


async def retry_busy(work: Callable[[], Awaitable[T]]) -> T:
    """`work()`, tried again while the store is busy; UserError("store_busy") once BUSY_PATIENCE is spent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_PATIENCE
    delay = BUSY_FIRST_DELAY
    while True:
        try:
            return await work()
        except StoreBusy as error:
            if loop.time() + delay > deadline:
                log.error("the database stayed busy; a request was refused (%s)", error)
                raise UserError("store_busy") from None
            log.warning("the database is busy (%s); trying again in %.1f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_MAX_DELAY)


async def acknowledged(interaction: discord.Interaction, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
    """Run `work` (retried while the store is busy); if it has not finished within ACK_AFTER, defer the
    interaction meanwhile. Returns its result and whether the interaction was deferred: then the caller
    answers by editing the original response. If the work fails after a deferral, the public "thinking…"
    message is removed, so the error can go out as an ephemeral followup (the tree's error handler)."""
    task = asyncio.ensure_future(retry_busy(work))
    try:
        done, _ = await asyncio.wait({task}, timeout=ACK_AFTER)
        deferred = False
        if not done:
            try:
                await interaction.response.defer(thinking=True)
                deferred = True
            except discord.HTTPException:
                log.warning("could not defer interaction %s; its answer may come too late", interaction.id)
        try:
            return await task, deferred
        except BaseException:
            if deferred:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.delete_original_response()
            raise
    finally:
        if not task.done():
            task.cancel()  # the command itself was cancelled


async def answer(interaction: discord.Interaction, deferred: bool, text: str) -> None:
    """The public answer to an interaction `acknowledged` may have deferred."""
    if deferred:
        await interaction.edit_original_response(content=text)
    else:
        await interaction.response.send_message(text)
