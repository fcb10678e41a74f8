"""Anima image to image and the hires fix on the tiny model (CPU, 64 px): AnimaAutoBlocks' image-to-image branch
with this backend's own blocks (weighted prompts, float32 loop, progress and cancellation), sizes, steps x strength,
one counter over both passes, cancel in the refine pass, every memory mode, and text to image unchanged after."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from inference.backends.anima import (
    AnimaBackend,
    Float32AnimaLoopDenoiser,
    StepEndBlock,
    StepStartBlock,
    WeightedAnimaTextConditioningStep,
    load_anima,
)
from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
from inference.types import (
    CancelToken,
    GenerationCancelled,
    GenerationParams,
    HiresFix,
    SourceImage,
    StepProgress,
    scaled_size,
)

SIZE = 64
SOURCE = SourceImage("inputs/source.png", "0" * 64)
PARAMS = GenerationParams("1girl, smile", "lowres", SIZE, SIZE, 4, 4.0, (5, 6), "flow_euler")


def spec() -> ModelSpec:
    return ModelSpec("tiny-anima", "anima", "anima", BuiltinSource("tiny-anima"), size_scale=0.125, memory="high")


def same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    pairs = zip(a, b, strict=True)
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 255 - x * 128 // width], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def img2img(strength: float, **changes: object) -> GenerationParams:
    return replace(PARAMS, source=SOURCE, strength=strength, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> AnimaBackend:
    runtime = RuntimeOptions("cpu", None, tmp_path_factory.mktemp("models"), local_files_only=True)
    return load_anima(spec(), runtime)


def test_the_img2img_branch_runs_this_backends_blocks(backend: AnimaBackend) -> None:
    branch = backend.pipeline.blocks.sub_blocks["denoise"].sub_blocks["img2img"]
    loop = branch.sub_blocks["denoise"].sub_blocks
    assert isinstance(branch.sub_blocks["text_conditioning"], WeightedAnimaTextConditioningStep)
    assert isinstance(loop["denoiser"], Float32AnimaLoopDenoiser)
    assert isinstance(loop["animebot_step_start"], StepStartBlock)
    assert isinstance(loop["animebot_step_end"], StepEndBlock)


def test_img2img_makes_width_x_height_from_the_source_it_is_given(backend: AnimaBackend) -> None:
    source = gradient(80, 48)
    images = backend.generate(img2img(0.6), source=source)
    assert [image.size for image in images] == [(SIZE, SIZE)] * 2
    other = source.transpose(Image.Transpose.ROTATE_180)
    assert not same(images, backend.generate(img2img(0.6), source=other))  # another source
    assert not same(images, backend.generate(replace(PARAMS)))  # not text to image
    # Weighted prompts take the weighted text-encoder step in this branch too.
    weighted = backend.generate(img2img(0.6, prompt="1girl, (smile:1.4)"), source=source)
    assert not same(images, weighted)


def test_img2img_runs_steps_times_strength_per_image(backend: AnimaBackend) -> None:
    seen: list[tuple[int, int]] = []
    backend.generate(img2img(0.3, steps=10), lambda p: seen.append((p.step, p.total)), source=gradient(SIZE, SIZE))
    assert seen == [(step, 6) for step in range(1, 7)]  # 10 - int(10 - 3) = 3 steps for each of two images


def test_hires_is_text_to_image_then_an_upscale_of_each_image(backend: AnimaBackend) -> None:
    params = replace(PARAMS, hires=HiresFix(1.5, 0.5))
    seen: list[tuple[int, int]] = []
    hires = backend.generate(params, lambda p: seen.append((p.step, p.total)))
    assert [image.size for image in hires] == [(96, 96)] * 2
    assert seen == [(step, 12) for step in range(1, 13)]  # (4 + 2) steps for each of two images
    first = backend.generate(PARAMS)
    width, height = scaled_size(SIZE, SIZE, 1.5)
    upscaled = [
        backend.generate(img2img(0.5, seeds=(seed,), width=width, height=height), source=image)[0]
        for seed, image in zip(PARAMS.seeds, first, strict=True)
    ]
    assert same(hires, upscaled)


def test_cancel_during_the_refine_pass(backend: AnimaBackend) -> None:
    token = CancelToken()
    seen: list[int] = []

    def on_step(progress: StepProgress) -> None:
        seen.append(progress.step)
        if progress.step == 5:  # the first image's refine pass
            token.cancel()

    with pytest.raises(GenerationCancelled):
        backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)), on_step, token)
    assert seen == [1, 2, 3, 4, 5]
    assert len(backend.generate(PARAMS)) == 2


def test_text_to_image_is_unchanged_after_image_to_image(backend: AnimaBackend) -> None:
    before = backend.generate(PARAMS)
    backend.generate(img2img(0.4), source=gradient(SIZE, SIZE))
    backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)))
    assert same(backend.generate(PARAMS), before)


def test_img2img_and_hires_give_the_same_pixels_in_every_mode(backend: AnimaBackend) -> None:
    source = gradient(SIZE, SIZE)
    hires = replace(PARAMS, hires=HiresFix(1.5, 0.5))
    expected = (backend.generate(img2img(0.5), source=source), backend.generate(hires))
    try:
        for mode in ("balanced", "low", "minimal"):
            backend.set_memory_mode(mode)
            assert same(backend.generate(img2img(0.5), source=source), expected[0]), mode
            assert same(backend.generate(hires), expected[1]), mode
    finally:
        backend.set_memory_mode("high")
    assert same(backend.generate(hires), expected[1])



def test_a_cancel_during_the_first_pass_decode_starts_no_refine(
    backend: AnimaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = CancelToken()
    vae = backend.pipeline.vae
    decode, encode = vae.decode, vae.encode
    encodes: list[int] = []

    def cancelling(*args: object, **kwargs: object) -> object:
        token.cancel()  # the user cancels while the first image's first pass decodes
        return decode(*args, **kwargs)

    def counting(*args: object, **kwargs: object) -> object:
        encodes.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", cancelling)
    monkeypatch.setattr(vae, "encode", counting)
    with pytest.raises(GenerationCancelled):
        backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)), None, token)
    assert encodes == []  # the refine pass's VAE encode never ran
