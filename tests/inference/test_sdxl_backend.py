"""SDXLBackend on the tiny random-weight SDXL model: exactness against diffusers, seeds, every source kind,
compel prompts, progress, cancellation and load errors. CPU only, 64x64, 3 steps."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from PIL import Image

from inference.backends.base import Backend
from inference.backends.sdxl import SDXL_BASE_CONFIG_REPO, SDXLBackend, load_sdxl
from inference.device import DecodeOutOfMemory
from inference.specs import (
    BuiltinSource,
    DirSource,
    HubSource,
    ModelSource,
    ModelSpec,
    RuntimeOptions,
    SingleFileSource,
)
from inference.tiny.sdxl import build_tiny_sdxl, ensure_tiny_sdxl
from inference.types import (
    CancelToken,
    GenerationCancelled,
    GenerationParams,
    LoadProgress,
    ModelLoadError,
    StepProgress,
)
from tests.inference.sdxl_checkpoint import save_sdxl_checkpoint

PROMPT = "1girl, solo, smile, looking at viewer"
NEGATIVE = "lowres, bad anatomy"
SEED = 1234
STEPS = 3
CFG = 5.0
SIZE = 64
FAKE_REPO = "animebot/tiny-sdxl"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def params(
    prompt: str = PROMPT,
    negative: str = NEGATIVE,
    seeds: tuple[int, ...] = (SEED,),
    sampler: str = "euler_a",
    steps: int = STEPS,
) -> GenerationParams:
    return GenerationParams(
        prompt=prompt,
        negative_prompt=negative,
        width=SIZE,
        height=SIZE,
        steps=steps,
        cfg=CFG,
        seeds=seeds,
        sampler=sampler,
    )


def spec(source: ModelSource) -> ModelSpec:
    return ModelSpec(name="tiny", family="sdxl", dialect="animagine-xl-4", source=source)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """The tiny model is bound by per-op overhead, not arithmetic: extra threads buy nothing and, on a
    busy machine, their spinning makes runs several times slower. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sdxl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sdxl-cache")


@pytest.fixture(scope="session")
def tiny_dir(sdxl_cache: Path) -> Path:
    """The tiny model, built once per session by the code under test."""
    return ensure_tiny_sdxl(sdxl_cache)


@pytest.fixture(scope="session")
def runtime(sdxl_cache: Path, tiny_dir: Path) -> RuntimeOptions:
    return RuntimeOptions(device="cpu", dtype=None, cache_dir=sdxl_cache, local_files_only=True)


@pytest.fixture(scope="session")
def backend(runtime: RuntimeOptions) -> SDXLBackend:
    return load_sdxl(spec(BuiltinSource("tiny-sdxl")), runtime)


@pytest.fixture(scope="session")
def reference(backend: SDXLBackend) -> StableDiffusionXLPipeline:
    """diffusers' own pipeline over the same components, with its own Euler a scheduler spaced as WebUI
    spaces it (timestep_spacing "linspace": the first sigma is sigma_max; see tests/inference/test_samplers.py)."""
    components = dict(backend.pipeline.components)
    components["scheduler"] = EulerAncestralDiscreteScheduler.from_config(
        backend.pipeline.scheduler.config, timestep_spacing="linspace"
    )
    pipe = StableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_image(
    pipe: StableDiffusionXLPipeline,
    prompt: str = PROMPT,
    negative: str | None = NEGATIVE,
    seed: int = SEED,
    scheduler: Any = None,
) -> np.ndarray:
    if scheduler is not None:
        pipe = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": scheduler})
        pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=prompt,
        negative_prompt=negative,
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=CFG,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return pixels(image)


@pytest.fixture(scope="session")
def expected(reference: StableDiffusionXLPipeline) -> np.ndarray:
    return diffusers_image(reference)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """A Hugging Face cache holding the tiny model as FAKE_REPO, laid out as huggingface_hub writes it."""
    cache = tmp_path_factory.mktemp("hf-hub-cache")
    repo = cache / ("models--" + FAKE_REPO.replace("/", "--"))
    shutil.copytree(tiny_dir, repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    return cache


@pytest.fixture
def use_hub_cache(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    yield hub_cache


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("single-file") / "tiny-sdxl.safetensors"
    return save_sdxl_checkpoint(build_tiny_sdxl(), path)


# -- the tiny model -------------------------------------------------------------------------------------


def test_tiny_build_is_deterministic_and_cached(tiny_dir: Path, sdxl_cache: Path) -> None:
    first, second = build_tiny_sdxl(), build_tiny_sdxl()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), name
    stamp = (tiny_dir / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_sdxl(sdxl_cache) == tiny_dir
    assert (tiny_dir / "model_index.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in sdxl_cache.iterdir() if p.name.startswith(".")] == []  # no staging left over


def test_interrupted_build_leaves_no_half_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inference.tiny.sdxl as tiny

    class Crashing:
        def save_pretrained(self, directory: Path) -> None:
            (Path(directory) / "model_index.json").write_text("{}")  # half written...
            raise OSError("disk full")

    monkeypatch.setattr(tiny, "build_tiny_sdxl", Crashing)
    with pytest.raises(OSError, match="disk full"):
        ensure_tiny_sdxl(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_backend_implements_the_protocol(backend: SDXLBackend) -> None:
    checked: Backend = backend
    assert checked.spec.family == "sdxl"


# -- exactness and seeds ------------------------------------------------------------------------------


def test_plain_prompt_is_pixel_identical_to_diffusers(backend: SDXLBackend, expected: np.ndarray) -> None:
    assert not backend.needs_compel(PROMPT, NEGATIVE)
    [image] = backend.generate(params())
    assert image.size == (SIZE, SIZE)
    assert np.array_equal(pixels(image), expected)


def test_euler_a_is_not_the_sdxl_configs_leading_schedule(
    backend: SDXLBackend, reference: StableDiffusionXLPipeline, expected: np.ndarray
) -> None:
    """The model's own scheduler config ("leading", first sigma 10.7) gives another image than ours."""
    leading = EulerAncestralDiscreteScheduler.from_config(reference.scheduler.config, timestep_spacing="leading")
    assert not np.array_equal(diffusers_image(reference, scheduler=leading), expected)
    backend.generate(params(steps=1))
    assert backend.pipeline.scheduler.config.timestep_spacing == "linspace"


def test_empty_negative_is_diffusers_default(backend: SDXLBackend, reference: StableDiffusionXLPipeline) -> None:
    [image] = backend.generate(params(negative=""))
    assert np.array_equal(pixels(image), diffusers_image(reference, negative=None))


def test_escaped_brackets_are_literal_text(backend: SDXLBackend, reference: StableDiffusionXLPipeline) -> None:
    prompt = "1girl, firefly \\(honkai: star rail\\), honkai \\(series\\)"
    assert not backend.needs_compel(prompt, NEGATIVE)
    [image] = backend.generate(params(prompt=prompt))
    plain = "1girl, firefly (honkai: star rail), honkai (series)"
    assert np.array_equal(pixels(image), diffusers_image(reference, prompt=plain))


def test_batch_image_depends_only_on_its_seed(backend: SDXLBackend) -> None:
    first, second = backend.generate(params(seeds=(11, 22)))
    [alone] = backend.generate(params(seeds=(22,)))
    # The seed fixes the image; CPU kernels round a batch of 2 and a batch of 1 differently in the last bit,
    # which can move a pixel or two by one level (it did with every schedule tried; "leading" at 3 steps
    # happened not to).
    assert np.abs(pixels(second) - pixels(alone)).max() <= 1
    assert np.abs(pixels(first) - pixels(second)).max() > 10


def test_samplers_switch_per_call_without_leaking_state(
    backend: SDXLBackend, reference: StableDiffusionXLPipeline, expected: np.ndarray
) -> None:
    [euler] = backend.generate(params(sampler="euler"))
    euler_expected = diffusers_image(
        reference, scheduler=EulerDiscreteScheduler.from_config(reference.scheduler.config, timestep_spacing="linspace")
    )
    assert np.array_equal(pixels(euler), euler_expected)
    assert not np.array_equal(pixels(euler), expected)
    backend.generate(params(sampler="dpmpp_2m_karras"))
    [again] = backend.generate(params(sampler="euler_a"))
    assert np.array_equal(pixels(again), expected)


def test_unknown_or_foreign_sampler_is_rejected(backend: SDXLBackend) -> None:
    with pytest.raises(ValueError, match="flow_euler"):
        backend.generate(params(sampler="flow_euler"))
    with pytest.raises(ValueError, match="nope"):
        backend.generate(params(sampler="nope"))


# -- compel: weighting and long prompts -----------------------------------------------------------------


def test_weighted_prompt_takes_compel_path(backend: SDXLBackend, reference: StableDiffusionXLPipeline) -> None:
    weighted = "(cat:1.5), dog"
    assert backend.needs_compel(weighted, NEGATIVE)
    assert backend.needs_compel("cat, dog", "[blurry]")
    assert not backend.needs_compel("cat, dog", NEGATIVE)
    cond = backend.encode_with_compel(weighted, NEGATIVE)
    assert cond.tokens == 77
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape == (1, 77, 96)
    assert cond.pooled_prompt_embeds.shape == (1, 32)

    [image] = backend.generate(params(prompt=weighted))
    assert not np.array_equal(pixels(image), diffusers_image(reference, prompt="cat, dog"))
    [again] = backend.generate(params(prompt=weighted))
    assert np.array_equal(pixels(image), pixels(again))


def test_weight_one_equals_plain_text_conditioning(backend: SDXLBackend) -> None:
    """(x:1) is weighting syntax with no effect: compel gives the embeddings diffusers computes for x."""
    pipe = backend.pipeline
    cond = backend.encode_with_compel("(cat, dog:1)", NEGATIVE)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        "cat, dog", device=torch.device("cpu"), negative_prompt=NEGATIVE
    )
    torch.testing.assert_close(cond.prompt_embeds, embeds)
    torch.testing.assert_close(cond.negative_prompt_embeds, negative)
    torch.testing.assert_close(cond.pooled_prompt_embeds, pooled)
    torch.testing.assert_close(cond.negative_pooled_prompt_embeds, negative_pooled)


def test_long_prompt_is_not_truncated(backend: SDXLBackend, reference: StableDiffusionXLPipeline) -> None:
    # The tiny tokenizer has no merges: one token per character, so this is about 200 tokens.
    long_prompt = ", ".join(["1girl", "solo", "smile", "outdoors", "night", "masterpiece"] * 6)
    tokens = len(backend.pipeline.tokenizer(long_prompt)["input_ids"])
    assert tokens > 77
    assert backend.needs_compel(long_prompt, NEGATIVE)
    cond = backend.encode_with_compel(long_prompt, NEGATIVE)
    assert cond.tokens > 77 and cond.tokens % 77 == 0
    assert cond.negative_prompt_embeds.shape == cond.prompt_embeds.shape

    [image] = backend.generate(params(prompt=long_prompt))
    truncated = diffusers_image(reference, prompt=long_prompt)  # diffusers keeps the first 77 tokens
    assert not np.array_equal(pixels(image), truncated)


def test_long_negative_and_empty_negative_on_compel_path(backend: SDXLBackend) -> None:
    long_negative = ", ".join(["lowres", "bad anatomy", "bad hands", "text", "error"] * 8)
    cond = backend.encode_with_compel("(cat:1.2)", long_negative)
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape
    assert cond.tokens > 77
    zero = backend.encode_with_compel("(cat:1.2)", "")  # SDXL: an empty negative is all zeros
    assert not zero.negative_prompt_embeds.any() and not zero.negative_pooled_prompt_embeds.any()
    [image] = backend.generate(params(prompt="(cat:1.2)", negative=long_negative))
    assert image.size == (SIZE, SIZE)


# -- progress and cancellation --------------------------------------------------------------------------


def test_progress_reports_every_step(backend: SDXLBackend) -> None:
    seen: list[StepProgress] = []
    backend.generate(params(steps=4), progress=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert {p.total for p in seen} == {4}
    assert all(later.elapsed >= earlier.elapsed >= 0 for earlier, later in itertools.pairwise(seen))


def test_cancel_at_step_two(backend: SDXLBackend, expected: np.ndarray) -> None:
    token = CancelToken()
    seen: list[int] = []

    def progress(p: StepProgress) -> None:
        seen.append(p.step)
        if p.step == 2:
            token.cancel()

    with pytest.raises(GenerationCancelled):
        backend.generate(params(steps=4), progress=progress, cancel=token)
    assert seen == [1, 2]
    # The pipeline is left usable: the next call runs every step and gives the usual image.
    [image] = backend.generate(params())
    assert np.array_equal(pixels(image), expected)


def test_cancelled_before_start(backend: SDXLBackend) -> None:
    token = CancelToken()
    token.cancel()
    seen: list[StepProgress] = []
    with pytest.raises(GenerationCancelled):
        backend.generate(params(), progress=seen.append, cancel=token)
    assert seen == []


@pytest.mark.filterwarnings("ignore")  # diffusers warns about fp16 on the CPU and about its own upcast_vae
def test_fp16_vae_keeps_its_dtype_after_a_failed_decode(runtime: RuntimeOptions) -> None:
    """diffusers upcasts a force_upcast fp16 VAE to fp32 for decoding and casts it back only on success;
    an out-of-memory error while decoding must not leave the model unable to decode again."""
    loaded = load_sdxl(spec(BuiltinSource("tiny-sdxl")), replace(runtime, dtype="float16"))
    vae = loaded.pipeline.vae
    assert vae.dtype == torch.float16 and vae.config.force_upcast

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    vae.decode = out_of_memory
    try:
        with pytest.raises(DecodeOutOfMemory) as failed:  # after the last step: the latents are kept
            loaded.generate(params(steps=1))
    finally:
        del vae.decode
    assert vae.dtype == torch.float16
    [kept] = failed.value.resume()  # the decode alone, again
    assert kept.size == (SIZE, SIZE)
    assert vae.dtype == torch.float16
    [image] = loaded.generate(params(steps=1))  # the retry decodes (before the fix: Half input, float bias)
    assert image.size == (SIZE, SIZE)
    assert vae.dtype == torch.float16


# -- sources --------------------------------------------------------------------------------------------


def assert_same_image(loaded: SDXLBackend, expected: np.ndarray) -> None:
    [image] = loaded.generate(params())
    assert np.array_equal(pixels(image), expected)


def test_builtin_reports_load_progress(runtime: RuntimeOptions) -> None:
    stages: list[LoadProgress] = []
    load_sdxl(spec(BuiltinSource("tiny-sdxl")), runtime, on_progress=stages.append)
    assert [s.done for s in stages] == [0, 1, 2, 3]
    assert {s.total for s in stages} == {3}
    assert stages[-1].stage == "ready"


def test_dir_source(tmp_path: Path, runtime: RuntimeOptions, expected: np.ndarray) -> None:
    build_tiny_sdxl().save_pretrained(tmp_path / "model")
    assert_same_image(load_sdxl(spec(DirSource(tmp_path / "model")), runtime), expected)


def test_hub_source_from_local_cache(use_hub_cache: Path, runtime: RuntimeOptions, expected: np.ndarray) -> None:
    loaded = load_sdxl(spec(HubSource(FAKE_REPO)), runtime)
    assert_same_image(loaded, expected)


def test_hub_source_not_cached(use_hub_cache: Path, runtime: RuntimeOptions) -> None:
    with pytest.raises(ModelLoadError, match="animebot/not-there"):
        load_sdxl(spec(HubSource("animebot/not-there")), runtime)


def test_single_file_source(checkpoint: Path, tiny_dir: Path, runtime: RuntimeOptions, expected: np.ndarray) -> None:
    """The LDM-layout file converts back to exactly the same weights (float32 copies, renames, q/k/v
    concatenation and transposes are all exact), so the image is pixel-identical."""
    loaded = load_sdxl(spec(SingleFileSource(checkpoint, config=str(tiny_dir))), runtime)
    assert_same_image(loaded, expected)


def test_single_file_with_config_from_hub_cache(
    use_hub_cache: Path, checkpoint: Path, runtime: RuntimeOptions, expected: np.ndarray
) -> None:
    loaded = load_sdxl(spec(SingleFileSource(checkpoint, config=FAKE_REPO)), runtime)
    assert_same_image(loaded, expected)


def test_single_file_without_config_offline_never_downloads(
    use_hub_cache: Path, checkpoint: Path, runtime: RuntimeOptions
) -> None:
    with pytest.raises(ModelLoadError, match=SDXL_BASE_CONFIG_REPO):
        load_sdxl(spec(SingleFileSource(checkpoint)), runtime)


# -- bad sources ----------------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path, runtime: RuntimeOptions) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_sdxl(spec(DirSource(missing)), runtime)
    assert str(missing) in str(info.value)


def test_directory_without_model_index(tmp_path: Path, runtime: RuntimeOptions) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        load_sdxl(spec(DirSource(tmp_path)), runtime)


def test_directory_with_broken_weights(tmp_path: Path, tiny_dir: Path, runtime: RuntimeOptions) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load model directory") as info:
        load_sdxl(spec(DirSource(broken)), runtime)
    assert str(broken) in str(info.value)


def test_missing_single_file(tmp_path: Path, tiny_dir: Path, runtime: RuntimeOptions) -> None:
    missing = tmp_path / "animagine-xl-4.0.safetensors"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_sdxl(spec(SingleFileSource(missing, config=str(tiny_dir))), runtime)
    assert str(missing) in str(info.value)


def test_corrupt_single_file(tmp_path: Path, tiny_dir: Path, runtime: RuntimeOptions) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ModelLoadError, match="could not load checkpoint file") as info:
        load_sdxl(spec(SingleFileSource(corrupt, config=str(tiny_dir))), runtime)
    assert str(corrupt) in str(info.value)


def test_single_file_missing_config_dir(tmp_path: Path, checkpoint: Path, runtime: RuntimeOptions) -> None:
    with pytest.raises(ModelLoadError, match="config directory"):
        load_sdxl(spec(SingleFileSource(checkpoint, config=str(tmp_path / "no-config"))), runtime)


def test_wrong_builtin_and_family(runtime: RuntimeOptions) -> None:
    with pytest.raises(ModelLoadError, match="tiny-anima"):
        load_sdxl(spec(BuiltinSource("tiny-anima")), runtime)
    with pytest.raises(ModelLoadError, match="not SDXL"):
        load_sdxl(ModelSpec("a", "anima", "anima", BuiltinSource("tiny-anima")), runtime)


# -- residency ------------------------------------------------------------------------------------------


def test_offload_activate_unload(runtime: RuntimeOptions, expected: np.ndarray) -> None:
    loaded = load_sdxl(spec(BuiltinSource("tiny-sdxl")), runtime)
    loaded.offload()
    assert_same_image(loaded, expected)  # generate re-activates an offloaded model
    loaded.offload()
    loaded.activate()
    assert_same_image(loaded, expected)
    loaded.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        loaded.generate(params())
