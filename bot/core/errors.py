"""Errors caused by user input. They carry a message key and parameters, so every frontend can show
the message in the user's language (see bot/core/messages.py); str() gives the English text."""

from __future__ import annotations

from bot.core.messages import render
from inference.types import SourceBusy


class UserError(ValueError):
    def __init__(self, key: str, **params: object) -> None:
        self.key = key
        self.params = params
        super().__init__(render(key, "en", **params))


class StoreBusy(SourceBusy):
    """The database stayed locked (another process holds a write transaction) or unwritable past the
    store's patience. Nothing was written: the caller may try again later, and must not lose what it
    was writing (a user's request, a job's outcome). A SourceBusy, so the GPU worker retries it."""


class StartError(Exception):
    """The service could not start (the data directory is in use by another process, the database or
    the tag database cannot be used). The message is one line for whoever runs the bot; everything the
    failed start had opened is closed again."""
