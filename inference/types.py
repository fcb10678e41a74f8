"""Plain data that flows into and out of a backend. No torch, no Discord: safe to import anywhere."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationParams:
    """Everything a backend needs to make images; the prompt is already in the model's dialect."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    seeds: tuple[int, ...]  # one per image: image i is reproducible from seeds[i] alone
    sampler: str  # a sampler id from inference.samplers (e.g. "euler_a", "euler")

    @property
    def count(self) -> int:
        return len(self.seeds)


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


class InvalidOutputError(Exception):
    """The model produced unusable output (NaN/inf pixels: overflow in half precision, broken weights)."""
