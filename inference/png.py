"""PNG output with the A1111 `parameters` text chunk that WebUI, ComfyUI and image boards read."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from inference.samplers import SAMPLERS
from inference.types import GenerationParams


def _number(value: float) -> str:
    return f"{value:g}"


def a1111_parameters(params: GenerationParams, index: int, model: str) -> str:
    """The `parameters` text of image `index` of a generation, as Stable Diffusion WebUI writes it.

    Each LoRA is appended to the prompt as `<lora:name:weight>` and listed in `Lora hashes`; image to image (a
    vary, an upscale, an uploaded image) adds `Denoising strength`; the hires fix adds `Hires upscale` and
    `Hires upscaler`, `Size` being the first pass's (WebUI's txt2img hires fix puts its refine strength in
    `Denoising strength`; after an image-to-image first pass it goes in `Hires denoising strength`)."""
    sampler = SAMPLERS[params.sampler].label if params.sampler in SAMPLERS else params.sampler
    fields = [
        f"Steps: {params.steps}",
        f"Sampler: {sampler}",
        f"CFG scale: {_number(params.cfg)}",
        f"Seed: {params.seeds[index]}",
        f"Size: {params.width}x{params.height}",
        f"Model: {model}",
    ]
    if params.source is not None:
        fields.append(f"Denoising strength: {_number(params.strength)}")
    if params.hires is not None:
        if params.source is None:
            fields.append(f"Denoising strength: {_number(params.hires.strength)}")
        fields.append(f"Hires upscale: {_number(params.hires.scale)}")
        fields.append("Hires upscaler: Lanczos")
        if params.source is not None:
            fields.append(f"Hires denoising strength: {_number(params.hires.strength)}")
    hashes = [f"{lora.name}: {lora.short_hash}" for lora in params.loras if lora.short_hash]
    if hashes:  # always quoted, as WebUI's infotext quotes a value holding a comma or a colon
        fields.append(f"Lora hashes: {json.dumps(', '.join(hashes), ensure_ascii=False)}")
    tags = [f"<lora:{lora.name}:{_number(lora.weight)}>" for lora in params.loras]
    prompt = " ".join(part for part in [params.prompt, *tags] if part)
    return f"{prompt}\nNegative prompt: {params.negative_prompt}\n{', '.join(fields)}"


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
