"""What an executor (the in-process worker of local mode, or the pool dispatcher of redis mode) tells /queue, /model,
`animebot doctor` and the metrics about its workers. Plain data; bot/core/executor.py re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class WorkerStatus:
    """One worker, for /queue, /model, doctor, metrics."""

    id: str  # e.g. "gpu-box:cuda:1" or "host:pid"
    device: str  # "cuda:1", "cpu"
    models: tuple[str, ...]  # the model names it can serve
    loaded: tuple[str, ...]  # the models it holds now
    busy_job: int | None  # the job it runs now
    budget: int | None  # bytes of device memory it can use (None: unknown/CPU)
    local: bool = False  # the in-process worker of local mode


@dataclass(frozen=True)
class ExecutorStatus:
    mode: Literal["local", "redis"]
    online: bool  # local: always True; redis: Redis answers
    workers: tuple[WorkerStatus, ...]
    running: dict[int, str]  # job id -> worker id, for the jobs running now
