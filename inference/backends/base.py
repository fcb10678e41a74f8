"""The one interface every model family implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from inference.memory import Footprint
from inference.specs import MemoryMode, ModelSpec
from inference.types import CancelToken, GenerationParams, LoraFile, ProgressCallback


class Backend(Protocol):
    """A loaded model that turns final prompts into images. Calls block: run them off the event loop."""

    spec: ModelSpec
    memory_mode: MemoryMode  # the memory mode in effect (inference.memory)

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        """One image per seed in params.seeds, in that order, at params.output_size(). Raises GenerationCancelled
        if cancelled.

        `source` (params.source decoded) makes it image to image; `loras` are applied for this call only: after
        it the pipeline is exactly as before (the next image without them is bit-identical)."""
        ...

    def set_memory_mode(self, mode: MemoryMode) -> None:
        """Switch the diffusers features of `mode` on the loaded pipeline (those of the mode before off). Idempotent;
        images do not change (slicing, tiling below one tile and offloading leave the arithmetic as it is)."""
        ...

    def footprint(self) -> Footprint:
        """The loaded weights' sizes per component with the family's working-set figures (inference.memory)."""
        ...

    def offload(self) -> None:
        """Move weights off the accelerator (kept in RAM) so another model can run."""
        ...

    def activate(self) -> None:
        """Move weights back onto the runtime device."""
        ...

    def unload(self) -> None:
        """Drop every reference to the weights and give the device memory back (free_device_memory)."""
        ...
