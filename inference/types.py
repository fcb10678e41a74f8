"""Plain data that flows into and out of a backend. No torch, no Discord: safe to import anywhere."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from inference.specs import ModelSpec

# Output sizes are kept multiples of this (SDXL's VAE needs 8; Anima's VAE 8 and its DiT 2x2 patches: 16).
SIZE_STEP = 16


@dataclass(frozen=True)
class LoraWeight:
    """A LoRA a job applies, as the job stores it: the library's name, the file's identity, the weight."""

    name: str  # the name in the LoRA library (inference.loras), as users type it
    sha256: str  # the whole file's SHA-256 (hex): how a worker finds its own copy of the file
    weight: float
    short_hash: str = ""  # WebUI's "Lora hashes" value (AutoV3: 12 hex of the tensors' SHA-256)


@dataclass(frozen=True)
class SourceImage:
    """The image an img2img, vary or upscale job starts from."""

    path: str  # relative to the data directory: images/... (a parent's result) or inputs/<sha256>.png
    sha256: str  # of the file's bytes
    job_id: int | None = None  # the parent job; None: an image the user uploaded
    index: int = 0  # which image of the parent job


@dataclass(frozen=True)
class HiresFix:
    """A second pass in the same job: the first pass's images upscaled by `scale` (Lanczos) and refined by
    img2img at `strength` (the usual WebUI "hires fix")."""

    scale: float
    strength: float


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """width x height times `scale`, each rounded to a multiple of SIZE_STEP (at least one step)."""
    return tuple(max(SIZE_STEP, round(v * scale / SIZE_STEP) * SIZE_STEP) for v in (width, height))  # type: ignore[return-value]


@dataclass(frozen=True)
class GenerationParams:
    """Everything a backend needs to make images; the prompt is already in the model's dialect.

    Text to image: no source, no hires. Image to image: `source` resized to width x height (Lanczos), noised to
    `strength` and denoised (steps x strength steps run). Hires fix: after that first pass, `hires` upscales and
    refines; the images come out at output_size()."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    seeds: tuple[int, ...]  # one per image: image i is reproducible from seeds[i] alone
    sampler: str  # a sampler id from inference.samplers (e.g. "euler_a", "euler")
    loras: tuple[LoraWeight, ...] = ()
    source: SourceImage | None = None
    strength: float = 1.0  # with a source: how much of it is re-noised (0 < strength <= 1)
    hires: HiresFix | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)

    def output_size(self) -> tuple[int, int]:
        """The size of the images the job makes."""
        if self.hires is None:
            return self.width, self.height
        return scaled_size(self.width, self.height, self.hires.scale)


@dataclass(frozen=True)
class StepProgress:
    """Reported after every denoising step (step counts from 1)."""

    step: int
    total: int
    elapsed: float  # seconds since the denoising loop started

    @property
    def eta(self) -> float:
        """Seconds left at the current pace."""
        if self.step <= 0:
            return 0.0
        return self.elapsed / self.step * (self.total - self.step)


ProgressCallback = Callable[[StepProgress], None]


@dataclass(frozen=True)
class LoadProgress:
    """Reported while a model loads: a short stage name and how far through the stages we are."""

    stage: str
    done: int
    total: int


LoadProgressCallback = Callable[[LoadProgress], None]


class LoadStages:
    """Reports a loader's stages in order: each call announces the next stage, finish() says "ready"."""

    def __init__(self, callback: LoadProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0

    def __call__(self, stage: str) -> None:
        if self.callback is not None:
            self.callback(LoadProgress(stage, self.done, self.total))
        self.done = min(self.done + 1, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(LoadProgress("ready", self.total, self.total))


@dataclass
class CancelToken:
    """Set from any thread; the backend checks it between denoising steps."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class GenerationCancelled(Exception):
    """Raised by a backend when its CancelToken was set during generation."""


class ModelLoadError(Exception):
    """A model could not be loaded; the message is meant for the person who configured it."""


def error_summary(error: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message` (cut to `limit` characters), to quote a library's error in ours."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


class InvalidOutputError(Exception):
    """The model produced unusable output (NaN/inf pixels: overflow in half precision, broken weights)."""


# -- what the GPU worker takes and gives (shared with the queue; no torch here) --


@dataclass(frozen=True)
class LoraFile:
    """A LoRA as the worker hands it to a backend: the job's LoraWeight found in this host's library."""

    name: str
    path: Path  # a .safetensors file (kohya/WebUI or diffusers key layout)
    sha256: str
    weight: float


@dataclass(frozen=True)
class WorkItem:
    job_id: int
    spec: ModelSpec
    params: GenerationParams
    image_paths: tuple[Path, ...]  # where image i is written (absolute)
    source_png: bytes | None = None  # params.source's file, read by the JobSource (the pool sends the bytes)


@dataclass(frozen=True)
class SavedImage:
    index: int
    seed: int
    path: Path
    width: int
    height: int
    parameters: str


class SourceBusy(Exception):
    """A JobSource could not hand out a job or record an outcome now (its database is locked, the disk
    is full) and nothing was written: the worker tries again later. Any other exception from a JobSource
    is taken for a lasting fault."""


class JobSource(Protocol):
    """Where the worker gets jobs and reports what happened to them. Called on the event loop.

    The worker survives any exception from these methods: a failed next_job() is asked again after a
    pause, a failed on_done/on_failed/on_cancelled is retried (with growing pauses) until it succeeds,
    so a job never stays running while the process lives. Recording must therefore be idempotent (a
    retry after a write that did commit changes nothing)."""

    async def next_job(self) -> WorkItem:
        """Wait for the next job to run (it is marked running before it is returned)."""
        ...

    def on_progress(self, job_id: int, progress: StepProgress) -> None: ...

    def on_model_loading(self, model: str, progress: LoadProgress) -> None: ...

    async def on_done(self, job_id: int, images: list[SavedImage]) -> None: ...

    async def on_failed(self, job_id: int, message: str) -> None: ...

    async def on_cancelled(self, job_id: int) -> None: ...
