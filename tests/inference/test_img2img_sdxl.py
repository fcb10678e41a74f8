"""SDXL image to image, vary/upscale and the hires fix on the tiny random-weight model (CPU, 64 px, a few steps):
the image-to-image pipeline shares the loaded weights, sizes, step counts and progress over both passes, cancel in
the refine pass, every memory mode, VAE tiling for a pass beyond one tile in high mode, and a decode that runs out
of memory in either pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from inference.backends.sdxl import SDXLBackend, load_sdxl
from inference.device import DecodeOutOfMemory
from inference.img2img import resized
from inference.offload import has_hooks
from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
from inference.types import (
    CancelToken,
    GenerationCancelled,
    GenerationParams,
    HiresFix,
    LoraFile,
    SourceImage,
    StepProgress,
    scaled_size,
)

SIZE = 64
SOURCE = SourceImage("inputs/source.png", "0" * 64)
PARAMS = GenerationParams("1girl, smile", "lowres", SIZE, SIZE, 4, 5.0, (11, 12), "euler_a")


def spec() -> ModelSpec:
    return ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory="high")


def arrays(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB"), dtype=np.int16) for image in images]


def same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b), strict=True))


def close(a: list[Image.Image], b: list[Image.Image]) -> bool:
    """Equal but for rounding: the CPU's convolutions round differently at another batch size (a pixel value
    or two, on a few pixels); a different seed or source changes pixels by tens."""
    pairs = list(zip(arrays(a), arrays(b), strict=True))
    return len(a) == len(b) and all(int(abs(x - y).max()) <= 2 and float(abs(x - y).mean()) < 0.05 for x, y in pairs)


def gradient(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 255 - x * 128 // width], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def img2img(strength: float, **changes: Any) -> GenerationParams:
    return replace(PARAMS, source=SOURCE, strength=strength, **changes)


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> SDXLBackend:
    runtime = RuntimeOptions("cpu", None, tmp_path_factory.mktemp("models"), local_files_only=True)
    return load_sdxl(spec(), runtime)


def unet_calls(backend: SDXLBackend) -> tuple[list[int], Any]:
    calls: list[int] = []
    handle = backend.pipeline.unet.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


# -- image to image ---------------------------------------------------------------------------------------


def test_img2img_runs_on_the_loaded_components_without_a_second_copy(backend: SDXLBackend) -> None:
    pipe = backend.pipeline
    pointers = {p.data_ptr() for p in pipe.unet.parameters()} | {p.data_ptr() for p in pipe.vae.parameters()}
    backend.generate(img2img(0.5), source=gradient(SIZE, SIZE))
    img2img_pipe = backend._img2img_pipe
    assert img2img_pipe is not None
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert getattr(img2img_pipe, name) is getattr(pipe, name), name
    after = {p.data_ptr() for p in pipe.unet.parameters()} | {p.data_ptr() for p in pipe.vae.parameters()}
    assert after == pointers
    backend.generate(img2img(0.5), source=gradient(SIZE, SIZE))
    assert backend._img2img_pipe is img2img_pipe  # made once per load


def test_img2img_resizes_the_source_and_each_image_depends_only_on_its_seed(backend: SDXLBackend) -> None:
    source = gradient(80, 48)  # another size and aspect: resized to width x height
    both = backend.generate(img2img(0.5), source=source)
    assert [image.size for image in both] == [(SIZE, SIZE)] * 2
    second = backend.generate(img2img(0.5, seeds=(12,)), source=source)
    assert close(both[1:], second)
    assert same(backend.generate(img2img(0.5), source=resized(source, SIZE, SIZE)), both)
    assert not close(both[:1], both[1:])


def test_the_source_counts_less_as_strength_grows(backend: SDXLBackend) -> None:
    """The random tiny VAE does not reproduce its input, so distances are taken to the source's round trip
    through it (encode, decode): the output drifts away from it as strength grows, and text to image, which
    ignores the source, is farther still than a low strength."""
    source = gradient(SIZE, SIZE)
    pipe = backend.pipeline
    with torch.no_grad():
        latents = pipe.vae.encode(pipe.image_processor.preprocess(source)).latent_dist.mean
        trip = np.asarray(pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0])

    def distance(images: list[Image.Image]) -> float:
        return float(np.mean([np.abs(a.astype(np.float64) - trip).mean() for a in arrays(images)]))

    steps = 10
    by_strength = [distance(backend.generate(img2img(s, steps=steps), source=source)) for s in (0.1, 0.6, 1.0)]
    text_to_image = distance(backend.generate(replace(PARAMS, steps=steps)))
    assert by_strength == sorted(by_strength) and by_strength[0] < by_strength[-1] - 2
    assert by_strength[0] < text_to_image - 2


def test_img2img_runs_steps_times_strength_and_reports_them(backend: SDXLBackend) -> None:
    seen: list[tuple[int, int]] = []
    calls, handle = unet_calls(backend)
    try:
        backend.generate(img2img(0.3, steps=10), lambda p: seen.append((p.step, p.total)), source=gradient(32, 32))
    finally:
        handle.remove()
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert len(calls) == 3  # CFG batched: one UNet forward per step


def test_a_strength_below_one_step_still_runs_one(backend: SDXLBackend) -> None:
    """diffusers raises when int(steps x strength) is 0; the backend makes the schedule just long enough."""
    seen: list[int] = []
    images = backend.generate(img2img(0.1, steps=4), lambda p: seen.append(p.total), source=gradient(SIZE, SIZE))
    assert len(images) == 2 and seen == [1]


def test_text_to_image_is_unchanged_after_image_to_image(backend: SDXLBackend) -> None:
    before = backend.generate(PARAMS)
    backend.generate(img2img(0.4), source=gradient(SIZE, SIZE))
    backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)))
    assert same(backend.generate(PARAMS), before)


# -- the hires fix -----------------------------------------------------------------------------------------


def test_hires_makes_output_size_with_one_progress_over_both_passes(backend: SDXLBackend) -> None:
    params = replace(PARAMS, hires=HiresFix(1.5, 0.5))
    seen: list[tuple[int, int]] = []
    images = backend.generate(params, lambda p: seen.append((p.step, p.total)))
    assert [image.size for image in images] == [params.output_size()] * 2 == [(96, 96)] * 2
    assert seen == [(step, 6) for step in range(1, 7)]  # 4 text-to-image steps, then 4 x 0.5 refine steps


def test_hires_is_text_to_image_then_an_upscale_of_each_image(backend: SDXLBackend) -> None:
    """The refine pass is what an upscale job of each image does (source: the image, size x 1.5, its seed)."""
    hires = backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.45)))
    first = backend.generate(PARAMS)
    width, height = scaled_size(SIZE, SIZE, 1.5)
    upscaled = [
        backend.generate(img2img(0.45, seeds=(seed,), width=width, height=height), source=image)[0]
        for seed, image in zip(PARAMS.seeds, first, strict=True)
    ]
    assert close(hires, upscaled)


def test_hires_from_a_source_runs_img2img_then_the_refine(backend: SDXLBackend) -> None:
    params = img2img(0.5, hires=HiresFix(2.0, 0.5))
    seen: list[tuple[int, int]] = []
    images = backend.generate(params, lambda p: seen.append((p.step, p.total)), source=gradient(SIZE, SIZE))
    assert [image.size for image in images] == [(128, 128)] * 2
    assert seen == [(step, 4) for step in range(1, 5)]


def test_cancel_during_the_refine_pass(backend: SDXLBackend) -> None:
    token = CancelToken()
    seen: list[int] = []

    def on_step(progress: StepProgress) -> None:
        seen.append(progress.step)
        if progress.step == 5:  # the refine pass's first step
            token.cancel()

    with pytest.raises(GenerationCancelled):
        backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)), on_step, token)
    assert seen == [1, 2, 3, 4, 5]
    assert len(backend.generate(PARAMS)) == 2  # the backend goes on


# -- memory modes and the VAE ------------------------------------------------------------------------------


def test_img2img_and_hires_give_the_same_pixels_in_every_mode(backend: SDXLBackend) -> None:
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
    pipe = backend.pipeline
    assert not any(has_hooks(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    assert same(backend.generate(hires), expected[1])


def test_high_mode_tiles_an_img2img_pass_beyond_one_tile(backend: SDXLBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's tile edge is made 64 px: the 96 px refine pass encodes and decodes in tiles in high mode
    (which does not tile otherwise), a text-to-image pass of the same size does not, and tiling is off after."""
    footprint = backend.footprint()
    monkeypatch.setattr(backend, "_footprint", replace(footprint, tile_px=SIZE))
    vae = backend.pipeline.vae
    tiled: list[str] = []
    decode, encode = vae.tiled_decode, vae._tiled_encode

    def tiled_decode(*args: Any, **kwargs: Any) -> Any:
        tiled.append("decode")
        return decode(*args, **kwargs)

    def tiled_encode(*args: Any, **kwargs: Any) -> Any:
        tiled.append("encode")
        return encode(*args, **kwargs)

    monkeypatch.setattr(vae, "tiled_decode", tiled_decode)
    monkeypatch.setattr(vae, "_tiled_encode", tiled_encode)
    backend.generate(replace(PARAMS, width=96, height=96, seeds=(1,)))
    assert tiled == []
    images = backend.generate(replace(PARAMS, seeds=(1,), hires=HiresFix(1.5, 0.5)))
    assert images[0].size == (96, 96)
    assert tiled == ["encode", "decode"]
    assert not vae.use_tiling


@pytest.mark.parametrize("first_pass", [True, False], ids=["first-pass", "refine"])
def test_a_decode_out_of_memory_in_either_pass_resumes_without_redoing_steps(
    backend: SDXLBackend, monkeypatch: pytest.MonkeyPatch, first_pass: bool
) -> None:
    params = replace(PARAMS, hires=HiresFix(1.5, 0.5))
    expected = backend.generate(params)
    vae = backend.pipeline.vae
    decode = vae.decode
    edge = (SIZE if first_pass else 96) // int(backend.pipeline.vae_scale_factor)
    failures = [1]

    def failing(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if latents.shape[-1] == edge and failures:
            failures.pop()
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.80 GiB")
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", failing)
    seen: list[tuple[int, int]] = []
    with pytest.raises(DecodeOutOfMemory) as caught:
        backend.generate(params, lambda p: seen.append((p.step, p.total)))
    at_failure = seen[-1]
    calls, handle = unet_calls(backend)
    try:
        images = caught.value.resume()
    finally:
        handle.remove()
    assert same(images, expected)
    assert len(calls) == (2 if first_pass else 0)  # only the refine's steps, when it had not run yet
    assert at_failure == ((4, 6) if first_pass else (6, 6))
    assert seen[-1] == (6, 6)  # the refine run by the resume goes on counting


def test_img2img_needs_a_sane_strength(backend: SDXLBackend) -> None:
    for strength in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            backend.generate(img2img(strength), source=gradient(SIZE, SIZE))


def test_the_source_is_kept_out_of_a_text_to_image_job(backend: SDXLBackend) -> None:
    """No source: params.strength is ignored and the job is plain text to image (what the rows of old jobs hold)."""
    assert same(backend.generate(replace(PARAMS, strength=0.3)), backend.generate(PARAMS))


def test_low_mode_sends_the_text_encoders_back_before_the_vae_encodes(
    backend: SDXLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers' chain would keep text_encoder_2 on the device through the source's encode; a hook on the VAE's
    encoder offloads both encoders first (on the CPU nothing moves: the hook is observed as it runs)."""
    from inference.offload import OffloadBefore

    seen: list[list[Any]] = []
    pre_forward = OffloadBefore.pre_forward

    def recording(self: OffloadBefore, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen.append([hook.model for hook in self.previous])
        return pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(OffloadBefore, "pre_forward", recording)
    pipe = backend.pipeline
    try:
        backend.set_memory_mode("low")
        for _ in range(2):  # hung again after diffusers renews its hooks
            seen.clear()
            backend.generate(img2img(0.5), source=gradient(SIZE, SIZE))
            assert seen and all(models == [pipe.text_encoder, pipe.text_encoder_2] for models in seen)
            assert not hasattr(pipe.vae.encoder, "_hf_hook")  # renewed by diffusers after the call
    finally:
        backend.set_memory_mode("high")


def test_a_cancel_during_the_first_pass_decode_runs_no_refine_step(
    backend: SDXLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = CancelToken()
    vae = backend.pipeline.vae
    decode = vae.decode

    def cancelling(*args: Any, **kwargs: Any) -> Any:
        token.cancel()  # the user cancels while the first pass decodes
        return decode(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", cancelling)
    calls, handle = unet_calls(backend)
    try:
        with pytest.raises(GenerationCancelled):
            backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)), None, token)
    finally:
        handle.remove()
    assert len(calls) == 4  # the first pass's steps only


class RecordingAdapters:
    """Stands in for LoraAdapters: records which LoRAs are applied while the UNet runs."""

    def __init__(self) -> None:
        self.active: tuple[LoraFile, ...] = ()

    @contextlib.contextmanager
    def applied(self, loras: Any) -> Iterator[None]:
        self.active = tuple(loras)
        try:
            yield
        finally:
            self.active = ()


def test_the_refine_run_by_a_resume_runs_with_the_jobs_loras(
    backend: SDXLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapters = RecordingAdapters()
    monkeypatch.setattr(backend, "adapters", adapters)
    lora = LoraFile("style", Path("style.safetensors"), "a" * 64, 0.7)
    vae = backend.pipeline.vae
    decode = vae.decode
    edge = SIZE // int(backend.pipeline.vae_scale_factor)
    failures = [1]

    def failing(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if latents.shape[-1] == edge and failures:
            failures.pop()
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", failing)
    during: list[tuple[LoraFile, ...]] = []
    handle = backend.pipeline.unet.register_forward_hook(lambda *_: during.append(adapters.active))
    try:
        with pytest.raises(DecodeOutOfMemory) as caught:
            backend.generate(replace(PARAMS, hires=HiresFix(1.5, 0.5)), loras=[lora])
        assert adapters.active == ()
        caught.value.resume()
    finally:
        handle.remove()
    assert during == [(lora,)] * 6  # 4 first-pass steps, then the resumed refine's 2
    assert adapters.active == ()


def test_weighted_and_long_prompts_take_the_compel_path_in_image_to_image(
    backend: SDXLBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inference.backends.sdxl as sdxl_module

    encoded: list[str] = []
    compel = sdxl_module._compel_conditioning

    def counting(pipe: Any, prompt: str, negative: str) -> Any:
        encoded.append(prompt)
        return compel(pipe, prompt, negative)

    monkeypatch.setattr(sdxl_module, "_compel_conditioning", counting)
    source = gradient(SIZE, SIZE)
    plain = backend.generate(img2img(0.6), source=source)
    weighted = backend.generate(img2img(0.6, prompt="1girl, (smile:1.4)"), source=source)
    long = backend.generate(img2img(0.6, prompt=", ".join(["1girl, smile, looking at viewer"] * 12)), source=source)
    assert encoded[0] == "1girl, (smile:1.4)" and len(encoded) == 2  # the plain prompt went to diffusers as text
    assert not same(plain, weighted) and not same(plain, long)
    hires = backend.generate(replace(PARAMS, prompt="1girl, (smile:1.4)", hires=HiresFix(1.5, 0.5)))
    assert len(encoded) == 3 and [image.size for image in hires] == [(96, 96)] * 2  # encoded once for both passes
