from __future__ import annotations

from pathlib import Path

from PIL import Image

from inference.png import a1111_parameters, encode_png, read_parameters, write_png
from inference.types import GenerationParams

PARAMS = GenerationParams("1girl, 笑顔", "lowres", 64, 96, 28, 5.0, (11, 12), "euler_a")


def test_a1111_parameters_text() -> None:
    assert a1111_parameters(PARAMS, 1, "animagine-xl-4") == (
        "1girl, 笑顔\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 5, Seed: 12, Size: 64x96, Model: animagine-xl-4"
    )


def test_png_round_trip_with_unicode(tmp_path: Path) -> None:
    image = Image.new("RGB", (64, 96), (200, 10, 10))
    text = a1111_parameters(PARAMS, 0, "m")
    path = tmp_path / "sub" / "a.png"
    write_png(path, encode_png(image, text))
    assert read_parameters(path) == text
    assert not list(tmp_path.rglob("*.part"))
    ascii_text = "1girl\nNegative prompt: \nSteps: 1, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 8x8, Model: m"
    assert read_parameters(encode_png(image, ascii_text)) == ascii_text
