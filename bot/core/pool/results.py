"""A worker's result, recorded by the bot at most once (bot side of the pool): the job must be running on the very
dispatch the result names (the worker it was handed to, that dispatch's token and attempt), its PNGs are written
where the in-process worker would have written them (JobQueue.image_paths), and the state change is the queue's
conditional UPDATE carrying the token, so a second result for the same job and attempt, or a result of an
earlier dispatch of it, changes nothing. No Redis here: the dispatcher reads and acknowledges the stream."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from bot.core.events import JobFinished
from bot.core.jobs import ImageRecord, JobRecord, JobState
from bot.core.pool.protocol import ResultMessage
from bot.core.queue import JobQueue

log = logging.getLogger(__name__)

WORKER_FAILED = "The worker could not make these images."


def write_pngs(files: list[tuple[Path, bytes]]) -> None:
    """Write each PNG whole or not at all (a temporary file renamed into place). Blocking: on a thread."""
    for path, data in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, path)


class ResultRecorder:
    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    async def record(self, message: ResultMessage, pngs: list[bytes]) -> str | None:
        """Record the result; None when it was recorded, else why it was ignored (logged by the caller). Raises
        StoreBusy / OSError (a busy database, a full disk): nothing is recorded then, and the caller tries
        again later (the entry stays pending)."""
        jobs = self.queue.jobs
        dispatch = await jobs.dispatch(message.job_id)
        if dispatch is None:
            return "the job is not running"
        if dispatch.worker != message.worker or dispatch.token != message.token:
            return f"the job runs on another dispatch (worker {dispatch.worker})"
        if dispatch.attempt != message.attempt:
            return f"attempt {message.attempt}, the job is at attempt {dispatch.attempt}"
        job = await jobs.get(message.job_id) if message.outcome == "done" else None
        if job is not None and (
            len(message.images) != len(job.params.seeds)
            or any(image.index >= len(job.params.seeds) for image in message.images)
        ):
            # Only the job knows its image count: a result with images missing or unknown fails the job.
            message = message.model_copy(
                update={"outcome": "failed", "images": (), "error": WORKER_FAILED + " (images missing or unknown)"}
            )
            pngs = []
        if message.outcome == "done":
            changed = job is not None and await self._store_images(job, message, pngs)
            if changed:
                self.queue.events.publish(JobFinished(message.job_id, JobState.DONE.value))
        elif message.outcome == "failed":
            error = message.error or WORKER_FAILED
            changed = await jobs.fail(message.job_id, error, message.token)
            if changed:
                self.queue.events.publish(JobFinished(message.job_id, JobState.FAILED.value, error))
        else:
            changed = await jobs.cancel(message.job_id, dispatch.cancelled_by or "system", message.token)
            if changed:
                self.queue.events.publish(JobFinished(message.job_id, JobState.CANCELLED.value))
        return None if changed else "the job changed meanwhile"

    async def _store_images(self, job: JobRecord, message: ResultMessage, pngs: list[bytes]) -> bool:
        paths = self.queue.image_paths(job)
        files: list[tuple[Path, bytes]] = []
        records: list[ImageRecord] = []
        for image, png in zip(message.images, pngs, strict=True):
            path = paths[image.index]
            files.append((path, png))
            records.append(
                ImageRecord(
                    job.id, image.index, image.seed, self.queue.relative(path), image.width, image.height,
                    image.parameters,
                )
            )
        await asyncio.to_thread(write_pngs, files)
        return await self.queue.jobs.finish(message.job_id, records, message.token)
