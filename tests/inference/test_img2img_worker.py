"""The GPU worker's side of image to image: a vary and an upscale job made from their parent's saved PNG by the
loaded model (no second load), the job's LoRAs found through the lookup (or the job failed clearly), a missing or
unreadable source failing only its job, and the memory plan taken at the size the images come out at."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.backends.base import Backend
from inference.cache import ModelCache
from inference.memory import Footprint, estimate_peak, reference_footprint
from inference.png import read_parameters
from inference.registry import load_backend
from inference.specs import BuiltinSource, MemoryMode, ModelSpec, RuntimeOptions
from inference.types import (
    CancelToken,
    GenerationParams,
    HiresFix,
    LoadProgressCallback,
    LoraFile,
    LoraWeight,
    ProgressCallback,
    SavedImage,
    SourceImage,
    StepProgress,
    WorkItem,
    scaled_size,
)
from inference.worker import GpuWorker, JobTooLarge, decode_source
from tests.inference.test_worker import Source

SPEC = ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory="high")
PARAMS = GenerationParams("1girl, smile", "lowres", 64, 64, 4, 5.0, (31, 32), "euler_a")
UPLOAD = SourceImage("inputs/x.png", "0" * 64)


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> RuntimeOptions:
    return RuntimeOptions("cpu", None, tmp_path_factory.mktemp("models"), local_files_only=True)


async def run_jobs(worker: GpuWorker, source: Source, items: Sequence[WorkItem]) -> list[tuple[str, int, object]]:
    worker.start()
    try:
        outcomes = []
        for item in items:
            await source.items.put(item)
            outcomes.append(await asyncio.wait_for(source.finished.get(), 120))
        return outcomes
    finally:
        await worker.stop()


def paths(tmp_path: Path, job_id: int, count: int) -> tuple[Path, ...]:
    return tuple(tmp_path / f"{job_id}-{index}.png" for index in range(count))


def source_of(saved: SavedImage, job_id: int) -> tuple[SourceImage, bytes]:
    data = saved.path.read_bytes()
    return SourceImage(saved.path.name, hashlib.sha256(data).hexdigest(), job_id, saved.index), data


def saved_one(outcome: tuple[str, int, object]) -> SavedImage:
    saved = outcome[2]
    assert isinstance(saved, list) and len(saved) == 1 and isinstance(saved[0], SavedImage)
    return saved[0]


async def test_vary_and_upscale_jobs_are_made_from_the_parent_with_no_reload(
    runtime: RuntimeOptions, tmp_path: Path
) -> None:
    loads: list[str] = []

    def counting(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        loads.append(spec.name)
        return load_backend(spec, runtime, progress)

    source = Source()
    worker = GpuWorker(source, ModelCache(runtime, loader=counting))
    parent = WorkItem(1, SPEC, PARAMS, paths(tmp_path, 1, 2))
    [(outcome, _, saved)] = await run_jobs(worker, source, [parent])
    assert outcome == "done" and isinstance(saved, list)
    picked: SavedImage = saved[1]
    origin, data = source_of(picked, 1)

    width, height = scaled_size(64, 64, 1.5)
    upscale = replace(PARAMS, width=width, height=height, seeds=(picked.seed,), source=origin, strength=0.35)
    vary = replace(PARAMS, seeds=(777,), source=origin, strength=0.6)
    worker = GpuWorker(source, worker.cache)
    items = [
        WorkItem(2, SPEC, upscale, paths(tmp_path, 2, 1), source_png=data),
        WorkItem(3, SPEC, vary, paths(tmp_path, 3, 1), source_png=data),
    ]
    outcomes = await run_jobs(worker, source, items)
    assert [o[0] for o in outcomes] == ["done", "done"]
    assert loads == ["tiny-sdxl"]  # one load for the parent and both children
    big, varied = (saved_one(outcome) for outcome in outcomes)
    assert (big.width, big.height) == (96, 96) == Image.open(big.path).size
    assert (varied.width, varied.height) == (64, 64) == Image.open(varied.path).size
    assert "Denoising strength: 0.35" in (read_parameters(big.path) or "")

    # The right parent: the children are what the backend makes from that image, not from its sibling.
    backend = worker.cache.get(SPEC)
    parent_image = decode_source(data)
    expected = backend.generate(upscale, source=parent_image)[0]
    sibling = backend.generate(upscale, source=Image.open(saved[0].path).convert("RGB"))[0]
    got = np.asarray(Image.open(big.path).convert("RGB"))
    assert np.array_equal(got, np.asarray(expected))
    assert not np.array_equal(got, np.asarray(sibling))
    worker.cache.clear()


async def test_a_hires_job_saves_output_size_images(runtime: RuntimeOptions, tmp_path: Path) -> None:
    source = Source()
    worker = GpuWorker(source, ModelCache(runtime))
    params = replace(PARAMS, hires=HiresFix(2.0, 0.5))
    [(outcome, _, saved)] = await run_jobs(worker, source, [WorkItem(1, SPEC, params, paths(tmp_path, 1, 2))])
    assert outcome == "done" and isinstance(saved, list)
    assert [(s.width, s.height) for s in saved] == [(128, 128)] * 2
    assert [Image.open(s.path).size for s in saved] == [(128, 128)] * 2
    worker.cache.clear()


# -- a recording backend: what the worker hands generate -----------------------------------------------


class Recording:
    """A Backend that records the source and LoRAs of every call and returns images of output_size()."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.memory_mode: MemoryMode = "high"
        self.calls: list[tuple[Image.Image | None, tuple[LoraFile, ...]]] = []

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        self.calls.append((source, tuple(loras)))
        if progress is not None:
            progress(StepProgress(1, 1, 0.0))
        return [Image.new("RGB", params.output_size(), (9, 9, 9)) for _ in params.seeds]

    def set_memory_mode(self, mode: MemoryMode) -> None:
        self.memory_mode = mode

    def footprint(self) -> Footprint:
        return reference_footprint(self.spec)

    def offload(self) -> None: ...

    def activate(self) -> None: ...

    def unload(self) -> None: ...


def recording_worker(
    runtime: RuntimeOptions, loras: dict[str, Path] | None = None
) -> tuple[GpuWorker, Source, Recording]:
    backend = Recording(SPEC)

    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        return backend

    source = Source()
    lookup = None if loras is None else loras.get
    return GpuWorker(source, ModelCache(runtime, loader=loader), loras=lookup), source, backend


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_the_worker_hands_the_decoded_source_and_the_found_loras(runtime: RuntimeOptions, tmp_path: Path) -> None:
    lora_path = tmp_path / "style.safetensors"
    worker, source, backend = recording_worker(runtime, {"ab" * 32: lora_path})
    origin = SourceImage("inputs/x.png", "cd" * 32)
    rgba = Image.new("RGBA", (40, 24), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (200, 0, 0, 0))  # fully transparent: flattened onto white, not red
    params = replace(
        PARAMS, source=origin, strength=0.5, loras=(LoraWeight("style", "ab" * 32, 0.8, "0123456789ab"),)
    )
    item = WorkItem(1, SPEC, params, paths(tmp_path, 1, 2), source_png=png_bytes(rgba))
    [(outcome, _, _)] = await run_jobs(worker, source, [item])
    assert outcome == "done"
    [(image, loras)] = backend.calls
    assert image is not None and image.mode == "RGB" and image.size == (40, 24)  # the backend resizes it
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 0)) == (10, 20, 30)
    assert loras == (LoraFile("style", lora_path, "ab" * 32, 0.8),)


@pytest.mark.parametrize(
    ("lookup", "params", "source_png", "message"),
    [
        ({}, replace(PARAMS, loras=(LoraWeight("gone", "e" * 64, 1.0),)), None, "LoRA gone is not on this worker"),
        (None, replace(PARAMS, loras=(LoraWeight("any", "e" * 64, 1.0),)), None, "LoRA any is not on this worker"),
        ({}, replace(PARAMS, source=UPLOAD), None, "source image of this job is missing"),
        ({}, replace(PARAMS, source=UPLOAD), b"not a png", "cannot be read"),
    ],
    ids=["lora-not-here", "no-library", "no-source-bytes", "corrupt-source"],
)
async def test_a_job_whose_inputs_are_missing_fails_alone(
    runtime: RuntimeOptions,
    tmp_path: Path,
    lookup: dict[str, Path] | None,
    params: GenerationParams,
    source_png: bytes | None,
    message: str,
) -> None:
    worker, source, backend = recording_worker(runtime, lookup)
    bad = WorkItem(1, SPEC, params, paths(tmp_path, 1, 2), source_png=source_png)
    good = WorkItem(2, SPEC, PARAMS, paths(tmp_path, 2, 2))
    outcomes = await run_jobs(worker, source, [bad, good])
    assert outcomes[0][0] == "failed" and message in str(outcomes[0][2])
    assert outcomes[1][0] == "done"  # the worker goes on
    assert len(backend.calls) == 1


def test_the_memory_plan_is_taken_at_the_output_size(runtime: RuntimeOptions) -> None:
    """A hires job whose first pass fits but whose refine at output_size() cannot, is refused before it loads."""
    footprint = reference_footprint(SPEC)
    limit = estimate_peak(footprint, 1024, 1024, 1, "minimal", 1) + 1
    limited = RuntimeOptions(runtime.device, None, runtime.cache_dir, True, vram_limit=limit)
    worker, _, _ = recording_worker(limited)
    plain = replace(PARAMS, width=1024, height=1024, seeds=(1,))
    assert worker._require_plan(SPEC, plain).mode == "minimal"
    big = replace(plain, hires=HiresFix(2.0, 0.5))
    assert estimate_peak(footprint, 2048, 2048, 1, "minimal", 1) > limit  # precondition
    with pytest.raises(JobTooLarge, match="Try a smaller size"):
        worker._require_plan(SPEC, big)


class DecodesTwice(Recording):
    """A hires job whose first pass's decode runs out of memory in high mode, and whose refine pass (run by that
    resume) runs out of memory in its decode in balanced mode: the worker must decode the refined latents then,
    not run the refine pass again."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.refines = 0
        self.decodes: list[tuple[str, MemoryMode]] = []

    def generate(
        self,
        params: GenerationParams,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        source: Image.Image | None = None,
        loras: Sequence[LoraFile] = (),
    ) -> list[Image.Image]:
        from inference.device import DecodeOutOfMemory

        def decode_refined() -> list[Image.Image]:
            self.decodes.append(("refined", self.memory_mode))
            return [Image.new("RGB", params.output_size(), (1, 2, 3)) for _ in params.seeds]

        def first_pass_resume() -> list[Image.Image]:
            self.decodes.append(("first", self.memory_mode))
            self.refines += 1
            if self.memory_mode == "balanced":
                raise DecodeOutOfMemory("CUDA out of memory", decode_refined)
            return decode_refined()

        raise DecodeOutOfMemory("CUDA out of memory", first_pass_resume)


async def test_a_refine_decode_out_of_memory_inside_a_resume_resumes_the_refined_latents(
    runtime: RuntimeOptions, tmp_path: Path
) -> None:
    backend = DecodesTwice(SPEC)

    def loader(spec: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> Backend:
        return backend

    source = Source()
    worker = GpuWorker(source, ModelCache(runtime, loader=loader))
    item = WorkItem(1, SPEC, replace(PARAMS, hires=HiresFix(1.5, 0.5)), paths(tmp_path, 1, 2))
    [(outcome, _, saved)] = await run_jobs(worker, source, [item])
    assert outcome == "done" and isinstance(saved, list) and len(saved) == 2
    assert backend.refines == 1  # the refine pass ran once
    assert backend.decodes == [("first", "balanced"), ("refined", "low")]
