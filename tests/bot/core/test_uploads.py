"""Uploads for img2img: what is accepted, what is refused before anything is decoded, EXIF orientation, storage
once under inputs/<sha256>.png, and an img2img job from one through the real service."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bot.core.errors import UserError
from bot.core.jobs import JobState
from bot.core.uploads import (
    MAX_UPLOAD_BYTES,
    check_declared,
    normalize_upload,
    read_source,
    store_upload,
)
from bot.prompts.builder import PromptChoices
from bot.prompts.dialects import load_dialect
from bot.prompts.requests import GenerationRequest
from tests.bot.conftest import ServiceFactory


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def refused_key(data: bytes) -> str:
    with pytest.raises(UserError) as refused:
        normalize_upload(data)
    return refused.value.key


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_become_rgb_pngs(fmt: str) -> None:
    png, width, height = normalize_upload(encoded(Image.new("RGB", (40, 24), (200, 10, 10)), fmt))
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.mode, image.size, width, height) == ("PNG", "RGB", (40, 24), 40, 24)


def test_other_types_and_damaged_files_are_refused() -> None:
    image = Image.new("RGB", (32, 32))
    assert refused_key(encoded(image, "GIF")) == "upload_not_image"
    assert refused_key(encoded(image, "BMP")) == "upload_not_image"
    assert refused_key(b"%PDF-1.4 not an image at all") == "upload_not_image"
    assert refused_key(encoded(image, "PNG")[:60]) == "upload_not_image"  # truncated
    assert refused_key(b"") == "upload_not_image"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose data is a few bytes: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    assert refused_key(png_header_only(50_000, 50_000)) == "upload_too_many_pixels"  # 2.5 gigapixels
    assert refused_key(png_header_only(5000, 4000)) == "upload_too_many_pixels"  # 20 MP: over the limit
    assert refused_key(png_header_only(9000, 100)) == "upload_too_many_pixels"  # a side too long
    assert refused_key(encoded(Image.new("RGB", (8, 300)), "PNG")) == "upload_too_small"


def test_size_limits_before_and_after_the_download() -> None:
    with pytest.raises(UserError) as refused:
        check_declared(MAX_UPLOAD_BYTES + 1)
    assert refused.value.key == "upload_too_big"
    with pytest.raises(UserError) as refused:
        check_declared(1000, 10_000, 10_000)
    assert refused.value.key == "upload_too_many_pixels"
    check_declared(1000, 1024, 1024)
    check_declared(1000)  # a file whose size Discord does not say is checked after the download
    assert refused_key(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD_BYTES) == "upload_too_big"


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _, width, height = normalize_upload(encoded(image, "JPEG", exif=exif.tobytes()))
    assert (width, height) == (20, 60)


def test_transparency_goes_on_white() -> None:
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    png, _, _ = normalize_upload(encoded(image, "PNG"))
    with Image.open(io.BytesIO(png)) as out:
        assert out.getpixel((5, 5)) == (255, 255, 255)


async def test_an_upload_is_stored_once_by_its_hash(tmp_path: Path) -> None:
    data = encoded(Image.new("RGB", (48, 32), (1, 2, 3)), "JPEG")
    first = await store_upload(data, tmp_path)
    again = await store_upload(data, tmp_path)
    assert first == again and (first.width, first.height) == (48, 32)
    stored = tmp_path / first.source.path
    assert first.source.path == f"inputs/{first.source.sha256}.png" and first.source.job_id is None
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == first.source.sha256
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == [stored.name]  # no temporary file left
    assert read_source(tmp_path, first.source) == stored.read_bytes()
    stored.write_bytes(b"something else")
    with pytest.raises(OSError):
        read_source(tmp_path, first.source)


async def test_a_full_disk_is_a_clear_refusal(tmp_path: Path) -> None:
    blocked = tmp_path / "data"
    blocked.mkdir()
    (blocked / "inputs").write_text("a file where the folder should be")
    with pytest.raises(UserError) as refused:
        await store_upload(encoded(Image.new("RGB", (32, 32)), "PNG"), blocked)
    assert refused.value.key == "upload_not_stored"


async def test_img2img_from_an_upload_takes_the_nearest_bucket(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n")
    upload = await service.store_upload(encoded(Image.new("RGB", (300, 440), (9, 9, 9)), "PNG"))
    spec = service.config.models["tiny-sdxl"]
    tools = load_dialect(spec.dialect).tools
    request = GenerationRequest(
        "tiny-sdxl", PromptChoices("1girl"), steps=2, kind="img2img", source=upload.source,
        aspect=f"{upload.width}:{upload.height}",
    )
    job = await service.submit(request, "u")
    assert (job.kind, job.parent_id) == ("img2img", None)
    assert (job.params.width, job.params.height) == (112, 160)  # 832x1216 (13:19, nearest to 300:440) x 1/8, by 16
    assert job.params.strength == tools.img2img_strength and job.params.source == upload.source
    done = await service.wait(job.id)
    assert done.state == JobState.DONE, done.error
    given = await service.submit(
        GenerationRequest(
            "tiny-sdxl", PromptChoices("1girl"), steps=2, kind="img2img", source=upload.source, aspect="1:1",
            strength=0.3,
        ),
        "u",
    )
    assert (given.params.width, given.params.height, given.params.strength) == (128, 128, 0.3)
    await service.wait(given.id)


async def test_a_waiting_img2img_job_survives_a_restart(make_service: ServiceFactory) -> None:
    service = await make_service("[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n")
    await service.set_paused(True)
    upload = await service.store_upload(encoded(Image.new("RGB", (64, 64), (9, 90, 9)), "PNG"))
    request = GenerationRequest(
        "tiny-sdxl", PromptChoices("1girl"), steps=2, kind="img2img", source=upload.source, aspect="1:1"
    )
    job = await service.submit(request, "u")
    await service.close()

    again = await make_service("[quotas]\nimages_per_day = 0\nmax_queued_jobs = 0\n")  # the same data directory
    stored = await again.job(job.id)
    assert stored is not None and stored.params.source == upload.source and stored.kind == "img2img"
    assert again.image_path(upload.source.path).is_file()
    await again.set_paused(False)
    done = await again.wait(job.id)
    assert done.state == JobState.DONE, done.error
