"""The rating check of results before they are posted ([safety]; docs/content-policy.md).

Every result image is rated by the tagger (GenerationService.rate: on a thread, the model loaded once and
shared with /describe; the rating stored with the image). In a server channel that is not age-restricted a
result is posted by its highest rating: `general` as it is, `sensitive` as a spoiler (or withheld, or
posted: [safety] sensitive, or the server's own choice: /safety, bot/core/safety_settings.py), `questionable`
and `explicit` withheld. Age-restricted channels and DMs get
everything. When the check cannot run (no tagger, a broken model) a result meant for a normal channel is
withheld: the check fails closed.

`preload_tagger` loads the tagger when the bot starts (a background task, the model on a thread), so the
first rated result or /describe does not wait for a download inside an interaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from bot.core.jobs import JobRecord
from bot.core.service import GenerationService
from bot.discord_app.permissions import channel_allows_nsfw

log = logging.getLogger(__name__)

Action = Literal["post", "spoiler", "withhold"]
UNCHECKED = "unchecked"  # the reason of a result withheld because the check could not run
SEVERITY = {"general": 0, "sensitive": 1, "questionable": 2, "explicit": 3}


@dataclass(frozen=True)
class Screening:
    action: Action
    rating: str | None = None  # the result's highest rating; "unchecked" when the check failed; None: not rated
    count: int = 0  # the result's images


def allowance(rating: str, sensitive: Literal["spoiler", "withhold", "post"]) -> Action:
    """What a channel that is not age-restricted does with a result of `rating`."""
    if rating == "general":
        return "post"
    if rating == "sensitive":
        return "spoiler" if sensitive == "spoiler" else "withhold" if sensitive == "withhold" else "post"
    return "withhold"  # questionable, explicit, and any rating this code does not know


class Screener:
    def __init__(self, service: GenerationService) -> None:
        self.service = service
        self._logged: set[str] = set()  # the check's errors logged so far (each once per process)

    async def screen(self, job: JobRecord, channel: Any) -> Screening:
        """Rate the job's images and decide how its result goes to `channel` (the Discord channel object)."""
        safety = await self.service.safety(job.guild_id)  # the server's own choice within what the config allows
        if not safety.rate_results:
            return Screening("post")
        open_channel = job.guild_id is None or channel_allows_nsfw(channel)  # DMs and age-restricted channels
        try:
            images = await self.service.rate(job.id)
        except Exception as error:  # TaggerError, an unreadable image, a bug: never post unchecked
            self._log_once(job.id, error)
            return Screening("post" if open_channel else "withhold", UNCHECKED, len(job.params.seeds))
        ratings = [image.rating or "explicit" for image in images]
        worst = max(ratings, key=lambda r: SEVERITY.get(r, len(SEVERITY)), default="general")
        if open_channel:
            return Screening("post", worst, len(images))
        return Screening(allowance(worst, safety.sensitive), worst, len(images))

    def _log_once(self, job_id: int, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        if message in self._logged:
            log.debug("job %s: the rating check could not run (%s)", job_id, message)
            return
        self._logged.add(message)
        log.error(
            "the rating check of results could not run (%s); results for channels that are not age-restricted "
            "are withheld until it can (first: job %s)", message, job_id,
        )


async def preload_tagger(service: GenerationService) -> None:
    """Load the shared tagger now if results are rated anywhere (the config's [safety] rate_results, or a
    server that turned it on); /describe alone loads it on its first use. Logs success or failure, never
    raises: a tagger that cannot be had is tried again by the first rating, which withholds (fails closed)
    meanwhile."""
    try:
        if not await service.rating_wanted():
            log.debug("results are not rated anywhere: the tagger is loaded on first use (/describe)")
            return
        source = service.config.tagger_options.source
        log.info("loading the tagger %s for the rating check of results", source)
        await service.load_tagger()
    except Exception as error:  # TaggerError (no network, a broken file), a closed store at shutdown
        log.warning("the tagger could not be loaded at start (%s: %s); the first rating tries again",
                  type(error).__name__, error)
        return
    log.info("tagger %s loaded", source)
