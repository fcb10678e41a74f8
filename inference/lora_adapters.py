"""LoRAs applied to a loaded pipeline for one job.

Placeholder until the LoRA package lands (issue 12, package A replaces this file at the merge): the backends
already call `LoraAdapters(pipe)` and `with adapters.applied(loras):` around their pipeline calls, and a job that
asks for LoRAs fails clearly instead of silently making an image without them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from inference.types import LoraFile


class LoraAdapters:
    """The LoRAs of one pipeline (this placeholder applies none)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @contextmanager
    def applied(self, loras: Sequence[LoraFile]) -> Iterator[None]:
        """The pipeline with `loras` applied for the block, exactly as before after it."""
        if loras:
            names = ", ".join(lora.name for lora in loras)
            raise RuntimeError(f"LoRAs are not supported by this worker yet ({names})")
        yield
