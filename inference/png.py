"""PNG output with the A1111 `parameters` text chunk that WebUI, ComfyUI and image boards read."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from PIL import Image, PngImagePlugin

from inference.samplers import SAMPLERS
from inference.types import GenerationParams


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_parameters(params: GenerationParams, index: int, model: str) -> str:
    """The `parameters` text of image `index` of a generation."""
    sampler = SAMPLERS[params.sampler].label if params.sampler in SAMPLERS else params.sampler
    settings = ", ".join(
        [
            f"Steps: {params.steps}",
            f"Sampler: {sampler}",
            f"CFG scale: {_number(params.cfg)}",
            f"Seed: {params.seeds[index]}",
            f"Size: {params.width}x{params.height}",
            f"Model: {model}",
        ]
    )
    return f"{params.prompt}\nNegative prompt: {params.negative_prompt}\n{settings}"


def encode_png(image: Image.Image, parameters: str) -> bytes:
    """PNG bytes carrying `parameters` as a tEXt/iTXt chunk. CPU work: run it off the event loop."""
    info = PngImagePlugin.PngInfo()
    if parameters.isascii():
        info.add_text("parameters", parameters)
    else:  # Japanese prompts: iTXt is UTF-8, tEXt is Latin-1 only
        info.add_itxt("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(path: Path, data: bytes) -> None:
    """Write atomically, so a crash never leaves half a file under the final name. A failed write (a
    full disk) removes its partial `.part` file: left behind, it would keep the disk full."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_parameters(path_or_bytes: Path | bytes) -> str | None:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        text = image.info.get("parameters")
    return text if isinstance(text, str) else None
