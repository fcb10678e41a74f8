"""Which backend loads which model family."""

from __future__ import annotations

from inference.backends.base import Backend
from inference.specs import ModelSpec, RuntimeOptions
from inference.types import LoadProgressCallback


def load_backend(
    spec: ModelSpec, runtime: RuntimeOptions, on_progress: LoadProgressCallback | None = None
) -> Backend:
    """Load `spec` onto runtime.device. Blocking and slow: call it off the event loop."""
    if spec.family == "sdxl":
        from inference.backends.sdxl import load_sdxl

        return load_sdxl(spec, runtime, on_progress)
    if spec.family == "anima":
        from inference.backends.anima import load_anima

        return load_anima(spec, runtime, on_progress)
    raise ValueError(f"unknown model family {spec.family!r}")
