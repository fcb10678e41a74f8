"""Answering Discord in time when the database is slow. Discord drops an interaction not acknowledged
within 3 seconds; a write can wait up to the store's busy timeout (another process holding a write
transaction) and then raise StoreBusy; meanwhile every other statement waits behind it on the one
connection. So a command that has not answered ACK_AFTER seconds after it started is acknowledged first
(deferred: the user sees "thinking…"; InTime), and a busy store is tried again, with growing
pauses, for up to BUSY_PATIENCE seconds (well inside the 15 minutes an interaction token lives) before the
user is told that nothing was queued. StoreBusy promises that nothing was written, so a retry never
queues a request twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import discord

from bot.core.errors import StoreBusy, UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

ACK_AFTER = 1.5  # seconds a submit may take before the interaction is deferred (Discord allows 3)
BUSY_PATIENCE = 600.0  # seconds to keep trying a busy store
BUSY_FIRST_DELAY = 0.5  # the first pause between two tries; it doubles up to BUSY_MAX_DELAY
BUSY_MAX_DELAY = 15.0


async def retry_while_busy(work: Callable[[], Awaitable[T]], patience: float | None = None) -> T:
    """`work()`, tried again with growing pauses while the store is busy; the last StoreBusy once
    `patience` seconds (default BUSY_PATIENCE) are spent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (BUSY_PATIENCE if patience is None else patience)
    delay = BUSY_FIRST_DELAY
    while True:
        try:
            return await work()
        except StoreBusy as error:
            if loop.time() + delay > deadline:
                raise
            log.warning("the database is busy (%s); trying again in %.1f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_MAX_DELAY)


async def retry_busy(work: Callable[[], Awaitable[T]]) -> T:
    """`work()`, tried again while the store is busy; UserError("store_busy") once BUSY_PATIENCE is spent."""
    try:
        return await retry_while_busy(work)
    except StoreBusy as error:
        log.error("the database stayed busy; a request was refused (%s)", error)
        raise UserError("store_busy") from None


class InTime:
    """Answers an interaction within Discord's 3 seconds however slow the store is:

        async with InTime(interaction, ephemeral=True) as reply:
            ...  # reads and writes that may wait for a lock held elsewhere
            await reply.send(text, view=view)

    If `send` has not been called ACK_AFTER seconds after entering, the interaction is deferred (the user
    sees "thinking…", ephemeral or not as asked; with `update`, a component's message is edited later) and
    `send` then edits that response. If the block raises after a deferral, the "thinking…" response is
    deleted, so the error handler's ephemeral followup is a message of its own (never an edit of a public
    response)."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool = False, update: bool = False) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.update = update  # answer by editing the component's message (history paging)
        self.deferred = False
        self._lock = asyncio.Lock()  # the deferral and the answer never cross
        self._timer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InTime:
        self._timer = asyncio.create_task(self._defer_later(), name=f"defer-{self.interaction.id}")
        return self

    async def _defer_later(self) -> None:
        await asyncio.sleep(ACK_AFTER)
        async with self._lock:
            if self.interaction.response.is_done():
                return
            try:
                if self.update:
                    await self.interaction.response.defer()  # a component's: the message is edited later
                else:
                    await self.interaction.response.defer(thinking=True, ephemeral=self.ephemeral)
                self.deferred = True
            except discord.HTTPException:
                log.warning("could not defer interaction %s; its answer may come too late", self.interaction.id)

    async def _stop_timer(self) -> None:
        timer = self._timer
        if timer is not None and not timer.done():
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)

    async def send(self, content: str, **kwargs: Any) -> None:
        """The answer: the response itself, or an edit of the deferred one."""
        async with self._lock:
            await self._stop_timer()
            if self.deferred:
                await self.interaction.edit_original_response(content=content, **kwargs)
            elif self.update:
                await self.interaction.response.edit_message(content=content, **kwargs)
            else:
                await self.interaction.response.send_message(content, ephemeral=self.ephemeral, **kwargs)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        async with self._lock:
            await self._stop_timer()
            if error is not None and self.deferred and not self.update:
                with contextlib.suppress(discord.HTTPException):
                    await self.interaction.delete_original_response()
