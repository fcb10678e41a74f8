"""Images users attach for img2img (/generate image:): refused by what Discord says of them before they are
downloaded (bytes, pixels), then read and handed to the service, which checks, normalizes and stores them
(bot/core/uploads.py) off the event loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.core.errors import UserError
from bot.core.uploads import StoredUpload, check_declared

if TYPE_CHECKING:
    from bot.discord_app.client import AnimeBot


async def read_upload(bot: AnimeBot, attachment: discord.Attachment) -> StoredUpload:
    """The attachment, checked and stored (inputs/<sha256>.png). Raises UserError: nothing is queued then."""
    check_declared(attachment.size, attachment.width, attachment.height)
    try:
        data = await attachment.read()
    except (discord.HTTPException, discord.ClientException):
        raise UserError("upload_unreadable") from None
    return await bot.service.store_upload(data)
