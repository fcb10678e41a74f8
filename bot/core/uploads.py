"""Images users upload for img2img (/generate image:): checked, normalized and stored once in the data directory.

What a hostile upload may try, and what stops it:
- a huge file: its declared size is refused before it is downloaded (`check_declared`), its real size after;
- a file that is not an image, or an image type the bot does not read: only PNG, JPEG and WebP, told by their
  magic bytes (not the name or the declared type), then by Pillow's own reading;
- a decompression bomb (a small file of gigapixels): the pixel count is read from the header and refused
  before anything is decoded; Pillow's own bomb check is an error here too;
- a rotated phone photo: its EXIF orientation is applied, so the image is upright as the user saw it.

The accepted image becomes an RGB PNG (transparency on white) named by the SHA-256 of its bytes,
`inputs/<sha256>.png`, written atomically before any job refers to it, so a restart finds it and the same upload
twice is stored once. Decoding and encoding run on a thread: the event loop never waits for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from bot.core.errors import UserError
from inference.types import SourceImage

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # a file larger than this is not downloaded
MAX_UPLOAD_SIDE = 8192
MAX_UPLOAD_PIXELS = 4096 * 4096  # what is decoded at most (a bomb declares more)
MIN_UPLOAD_SIDE = 16
INPUTS = "inputs"  # under the data directory
FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}  # Pillow's format names → the names users know
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG; WebP: RIFF....WEBP


@dataclass(frozen=True)
class StoredUpload:
    """An accepted upload: where it is stored and its (upright) size."""

    source: SourceImage  # path relative to the data directory, sha256 of the stored PNG; no parent job
    width: int
    height: int


def _too_big(size: int) -> UserError:
    return UserError("upload_too_big", size_mb=f"{size / 1024 / 1024:.1f}", limit_mb=MAX_UPLOAD_BYTES // 1024 // 1024)


def _too_many_pixels() -> UserError:
    return UserError("upload_too_many_pixels", megapixels=MAX_UPLOAD_PIXELS // 1_000_000, side=MAX_UPLOAD_SIDE)


def _check_dimensions(width: int, height: int) -> None:
    if width * height > MAX_UPLOAD_PIXELS or max(width, height) > MAX_UPLOAD_SIDE:
        raise _too_many_pixels()
    if min(width, height) < MIN_UPLOAD_SIDE:
        raise UserError("upload_too_small", width=width, height=height, side=MIN_UPLOAD_SIDE)


def check_declared(size: int, width: int | None = None, height: int | None = None) -> None:
    """What Discord says of an attachment before it is downloaded: its bytes and, for images, its size.
    Raises UserError when it is certainly refused."""
    if size > MAX_UPLOAD_BYTES:
        raise _too_big(size)
    if size <= 0:
        raise UserError("upload_not_image")
    if width is not None and height is not None and width > 0 and height > 0:
        _check_dimensions(width, height)


def _is_supported_magic(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def normalize_upload(data: bytes) -> tuple[bytes, int, int]:
    """The upload as an upright RGB PNG and its width and height. Blocking (decodes the image): call it on a
    thread. Raises UserError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise _too_big(len(data))
    if not _is_supported_magic(data):
        raise UserError("upload_not_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a warning is a refusal here
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
                _check_dimensions(*image.size)  # from the header: nothing is decoded yet
                image.load()
                upright = ImageOps.exif_transpose(image)
                if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
                    rgba = upright.convert("RGBA")
                    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                    rgb.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    rgb = upright.convert("RGB")
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels() from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):  # damaged or truncated files
        raise UserError("upload_not_image") from None
    out = io.BytesIO()
    rgb.save(out, "PNG")
    return out.getvalue(), rgb.width, rgb.height


def _write_once(path: Path, data: bytes) -> None:
    """`data` at `path`, atomically (a temporary file renamed), unless a file of that content is there."""
    if path.is_file() and path.stat().st_size == len(data):
        return  # named by the content's hash: the same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _store(data: bytes, data_dir: Path) -> StoredUpload:
    png, width, height = normalize_upload(data)
    digest = hashlib.sha256(png).hexdigest()
    relative = f"{INPUTS}/{digest}.png"
    try:
        _write_once(data_dir / relative, png)
    except OSError:  # a full disk, no permission: nothing is queued, the user is told
        raise UserError("upload_not_stored") from None
    return StoredUpload(SourceImage(relative, digest), width, height)


async def store_upload(data: bytes, data_dir: Path) -> StoredUpload:
    """Check and normalize an upload and store it as inputs/<sha256>.png under `data_dir`, on a thread.
    Raises UserError (nothing is stored then, also when the disk refuses the file)."""
    return await asyncio.to_thread(_store, data, data_dir)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (blocking). Raises OSError."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_source(data_dir: Path, source: SourceImage) -> bytes:
    """The bytes of a job's source image, checked against the SHA-256 the job recorded (blocking). Raises
    OSError when it is missing, unreadable or not the same file any more."""
    data = (data_dir / source.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise OSError(f"{source.path} changed since the job was queued")
    return data
