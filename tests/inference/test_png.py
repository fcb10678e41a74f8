from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PIL import Image

from inference.png import a1111_parameters, encode_png, read_parameters, write_png
from inference.types import GenerationParams, HiresFix, LoraWeight, SourceImage

PARAMS = GenerationParams("1girl, 笑顔", "lowres", 64, 96, 28, 5.0, (11, 12), "euler_a")
SETTINGS = "Steps: 28, Sampler: Euler a, CFG scale: 5, Seed: 12, Size: 64x96, Model: animagine-xl-4"
LORAS = (LoraWeight("flat color", "a" * 64, 0.8, "0123456789ab"), LoraWeight("detail", "b" * 64, 1.25, "ba9876543210"))
SOURCE = SourceImage("images/1/0.png", "c" * 64, job_id=1)


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


def test_loras_are_appended_to_the_prompt_and_hashed_as_webui_writes_them() -> None:
    params = replace(PARAMS, loras=LORAS)
    assert a1111_parameters(params, 1, "animagine-xl-4") == (
        "1girl, 笑顔 <lora:flat color:0.8> <lora:detail:1.25>\nNegative prompt: lowres\n"
        f'{SETTINGS}, Lora hashes: "flat color: 0123456789ab, detail: ba9876543210"'
    )
    unhashed = replace(PARAMS, prompt="", loras=(LoraWeight("x", "d" * 64, 1.0),))
    assert a1111_parameters(unhashed, 0, "m").startswith("<lora:x:1>\n")
    assert "Lora hashes" not in a1111_parameters(unhashed, 0, "m")


def test_img2img_vary_and_upscale_record_their_denoising_strength() -> None:
    params = replace(PARAMS, source=SOURCE, strength=0.35)
    assert a1111_parameters(params, 1, "animagine-xl-4").endswith(f"{SETTINGS}, Denoising strength: 0.35")


def test_the_hires_fix_is_recorded_as_webui_records_it() -> None:
    hires = replace(PARAMS, hires=HiresFix(1.5, 0.4))
    assert a1111_parameters(hires, 1, "animagine-xl-4").endswith(
        f"{SETTINGS}, Denoising strength: 0.4, Hires upscale: 1.5, Hires upscaler: Lanczos"
    )
    both = replace(hires, source=SOURCE, strength=0.6, loras=LORAS[:1])
    assert a1111_parameters(both, 1, "animagine-xl-4").endswith(
        f"{SETTINGS}, Denoising strength: 0.6, Hires upscale: 1.5, Hires upscaler: Lanczos, "
        'Hires denoising strength: 0.4, Lora hashes: "flat color: 0123456789ab"'
    )
