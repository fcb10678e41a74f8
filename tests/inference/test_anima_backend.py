"""AnimaBackend on the tiny random-weight Anima: equality with diffusers, seeds, every source kind,
progress, cancellation, prompt weights, and the errors users see for bad ComfyUI files."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.backends.anima import AnimaBackend, load_anima
from inference.specs import BuiltinSource, ComfyUISource, DirSource, HubSource, ModelSource, ModelSpec, RuntimeOptions
from inference.tiny.anima import ensure_tiny_anima
from inference.types import CancelToken, GenerationCancelled, GenerationParams, ModelLoadError, StepProgress
from tests.inference.anima_comfyui_files import ComfyUIFiles, write_comfyui_files

PROMPT = "1girl, solo, smile, long hair, blue eyes, outdoors, night sky"
NEGATIVE = "worst quality, low quality, blurry"
HUB_REPO = "animebot-test/tiny-anima"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def params(
    seeds: tuple[int, ...] = (1234,), steps: int = 3, cfg: float = 4.5, prompt: str = PROMPT, negative: str = NEGATIVE
) -> GenerationParams:
    return GenerationParams(
        prompt=prompt,
        negative_prompt=negative,
        width=64,
        height=64,
        steps=steps,
        cfg=cfg,
        seeds=seeds,
        sampler="flow_euler",
    )


def runtime(cache: Path, local_files_only: bool = True) -> RuntimeOptions:
    return RuntimeOptions(device="cpu", dtype=None, cache_dir=cache, local_files_only=local_files_only)


def spec(source: ModelSource, name: str = "anima-test") -> ModelSpec:
    return ModelSpec(name=name, family="anima", dialect="anima", source=source)


def pixels(images: list[Any]) -> list[np.ndarray]:
    return [np.asarray(im.convert("RGB")) for im in images]


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def anima_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anima-cache")


@pytest.fixture(scope="session")
def tiny_dir(anima_cache: Path) -> Path:
    return ensure_tiny_anima(anima_cache)


@pytest.fixture(scope="session")
def backend(tiny_dir: Path, anima_cache: Path) -> AnimaBackend:
    return load_anima(spec(DirSource(tiny_dir)), runtime(anima_cache))


@pytest.fixture(scope="session")
def reference_image(backend: AnimaBackend) -> np.ndarray:
    return pixels(backend.generate(params()))[0]


@pytest.fixture(scope="session")
def comfyui_files(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ComfyUIFiles:
    from diffusers import AnimaModularPipeline

    pipe = AnimaModularPipeline.from_pretrained(str(tiny_dir))
    pipe.load_components(dtype=torch.float32)
    return write_comfyui_files(pipe, tmp_path_factory.mktemp("ComfyUI"))


def repoint_index(model_dir: Path, location: str) -> Path:
    """Make every component entry of a modular_model_index.json point at `location`."""
    index = model_dir / "modular_model_index.json"
    data = json.loads(index.read_text())
    for value in data.values():
        if isinstance(value, list) and len(value) == 3 and isinstance(value[2], dict):
            value[2]["pretrained_model_name_or_path"] = location
            value[2]["revision"] = None
    index.write_text(json.dumps(data, indent=2))
    return model_dir


def make_fake_hub_cache(tiny_dir: Path, cache: Path, repo_id: str = HUB_REPO) -> Path:
    """The tiny model laid out as huggingface_hub caches a downloaded repo; its index points at the repo id."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / HUB_COMMIT
    repoint_index(Path(shutil.copytree(tiny_dir, snapshot)), repo_id)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(HUB_COMMIT)
    return cache


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An HF cache of our own, offline: huggingface_hub reads these constants at call time."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    yield cache


# ------------------------------------------------------------------------------------------- the model


def test_builtin_tiny_anima_makes_64px_images(tmp_path: Path) -> None:
    b = load_anima(spec(BuiltinSource("tiny-anima"), "tiny-anima"), runtime(tmp_path))
    images = b.generate(params(steps=2))
    assert [im.size for im in images] == [(64, 64)]
    assert images[0].mode == "RGB"
    index = tmp_path / "tiny-anima" / "modular_model_index.json"
    assert str(tmp_path / "tiny-anima") in index.read_text()  # not the temporary build directory
    before = index.stat().st_mtime_ns
    assert ensure_tiny_anima(tmp_path) == tmp_path / "tiny-anima"
    assert index.stat().st_mtime_ns == before  # cached, not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-anima-")]


def test_pixel_identical_to_plain_diffusers(backend: AnimaBackend, tiny_dir: Path, reference_image: np.ndarray) -> None:
    from diffusers import AnimaModularPipeline, ClassifierFreeGuidance

    p = params()
    pipe = AnimaModularPipeline.from_pretrained(str(tiny_dir))
    pipe.load_components(dtype=torch.float32)
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=p.cfg))
    expected = pipe(
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        height=p.height,
        width=p.width,
        num_inference_steps=p.steps,
        generator=torch.Generator().manual_seed(p.seeds[0]),
        output="images",
    )[0]
    assert np.array_equal(reference_image, np.asarray(expected))


def test_each_image_depends_only_on_its_seed(backend: AnimaBackend) -> None:
    pair = pixels(backend.generate(params(seeds=(11, 22))))
    alone = pixels(backend.generate(params(seeds=(22,))))[0]
    assert np.array_equal(pair[1], alone)
    assert not np.array_equal(pair[0], pair[1])


def test_cfg_changes_between_calls(backend: AnimaBackend, reference_image: np.ndarray) -> None:
    other = pixels(backend.generate(params(cfg=1.0)))[0]
    assert not np.array_equal(other, reference_image)
    assert np.array_equal(pixels(backend.generate(params()))[0], reference_image)


def test_unknown_sampler_is_refused(backend: AnimaBackend) -> None:
    p = GenerationParams(PROMPT, NEGATIVE, 64, 64, 2, 4.0, (1,), "euler_a")
    with pytest.raises(ValueError, match="flow_euler"):
        backend.generate(p)


def test_size_must_fit_the_latent_grid(backend: AnimaBackend) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        backend.generate(GenerationParams(PROMPT, NEGATIVE, 72, 64, 2, 4.0, (1,), "flow_euler"))


# ------------------------------------------------------------------------------------------ conversions


def test_dit_prefix_variants_convert_alike(comfyui_files: ComfyUIFiles) -> None:
    from inference.backends.anima_comfyui import SLOT_DIFFUSION_MODEL, guess_checkpoint_kind, split_diffusion_model

    official = load_file(str(comfyui_files.diffusion_model))
    expected_dit, expected_adapter = split_diffusion_model(dict(official))
    for variant in (
        {k.removeprefix("net."): v for k, v in official.items()},  # saved by a trainer, no prefix
        {"model.diffusion_model." + k.removeprefix("net."): v for k, v in official.items()},  # ComfyUI save
    ):
        assert guess_checkpoint_kind(variant) == SLOT_DIFFUSION_MODEL
        dit, adapter = split_diffusion_model(variant)
        assert dit.keys() == expected_dit.keys() and adapter.keys() == expected_adapter.keys()


def test_text_encoder_file_may_carry_the_lm_head(comfyui_files: ComfyUIFiles) -> None:
    from inference.backends.anima_comfyui import SLOT_TEXT_ENCODER, convert_text_encoder, guess_checkpoint_kind

    sd = load_file(str(comfyui_files.text_encoder))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    assert guess_checkpoint_kind(sd) == SLOT_TEXT_ENCODER
    converted = convert_text_encoder(sd)
    assert "lm_head.weight" not in converted and "embed_tokens.weight" in converted


# -------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("revision", [None, HUB_COMMIT])
def test_hub_source_from_offline_cache(
    revision: str | None, tiny_dir: Path, offline_hub: Path, anima_cache: Path, reference_image: np.ndarray
) -> None:
    make_fake_hub_cache(tiny_dir, offline_hub)
    b = load_anima(spec(HubSource(HUB_REPO, revision=revision)), runtime(anima_cache))
    # Every component came out of the HF cache, none from the original directory.
    for name in ("transformer", "text_encoder", "vae", "text_conditioner", "tokenizer"):
        assert b.pipeline.get_component_spec(name).pretrained_model_name_or_path == HUB_REPO
    assert np.array_equal(pixels(b.generate(params()))[0], reference_image)


def test_hub_source_not_cached_offline_is_a_load_error(offline_hub: Path, anima_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match="nobody/not-there"):
        load_anima(spec(HubSource("nobody/not-there")), runtime(anima_cache, local_files_only=False))


def test_dir_source_missing_is_a_load_error(tmp_path: Path, anima_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_anima(spec(DirSource(tmp_path / "nope")), runtime(anima_cache))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config"):
        load_anima(spec(DirSource(tmp_path / "empty")), runtime(anima_cache))


def test_dir_source_with_missing_weights_names_the_component(tiny_dir: Path, tmp_path: Path, anima_cache: Path) -> None:
    broken = repoint_index(shutil.copytree(tiny_dir, tmp_path / "broken"), str(tmp_path / "broken"))
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="vae"):
        load_anima(spec(DirSource(broken)), runtime(anima_cache))


def config_only_copy(tiny_dir: Path, dest: Path) -> Path:
    """What a user gets from downloading only the json/tokenizer files of a diffusers Anima repo."""
    shutil.copytree(tiny_dir, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return repoint_index(dest, "/nonexistent/anima")


@pytest.mark.parametrize("config_kind", ["full", "configs-only"])
def test_comfyui_source_round_trips(
    config_kind: str,
    comfyui_files: ComfyUIFiles,
    tiny_dir: Path,
    tmp_path: Path,
    anima_cache: Path,
    reference_image: np.ndarray,
) -> None:
    config = tiny_dir if config_kind == "full" else config_only_copy(tiny_dir, tmp_path / "config")
    source = ComfyUISource(
        diffusion_model=comfyui_files.diffusion_model,
        text_encoder=comfyui_files.text_encoder,
        vae=comfyui_files.vae,
        config=str(config),
    )
    stages: list[str] = []
    b = load_anima(spec(source), runtime(anima_cache), lambda p: stages.append(p.stage))
    assert "reading the VAE" in stages and stages[-1] == "ready"
    assert np.array_equal(pixels(b.generate(params()))[0], reference_image)


def test_comfyui_files_have_the_real_key_layouts(comfyui_files: ComfyUIFiles) -> None:
    dm = load_file(str(comfyui_files.diffusion_model))
    assert "net.blocks.0.self_attn.q_proj.weight" in dm
    assert "net.x_embedder.proj.1.weight" in dm
    assert any(k.startswith("net.llm_adapter.blocks.0.cross_attn.") for k in dm)
    te = load_file(str(comfyui_files.text_encoder))
    assert "model.embed_tokens.weight" in te
    vae = load_file(str(comfyui_files.vae))
    assert "decoder.middle.0.residual.0.gamma" in vae and "encoder.downsamples.0.residual.2.weight" in vae
    assert "decoder.upsamples.4.shortcut.weight" in vae and "conv1.weight" in vae


def comfy_source(files: ComfyUIFiles, config: Path, **override: Path) -> ModelSpec:
    paths = {"diffusion_model": files.diffusion_model, "text_encoder": files.text_encoder, "vae": files.vae}
    paths.update(override)
    return spec(ComfyUISource(config=str(config), **paths))


def test_comfyui_missing_file(comfyui_files: ComfyUIFiles, tiny_dir: Path, tmp_path: Path, anima_cache: Path) -> None:
    missing = tmp_path / "models" / "vae" / "qwen_image_vae.safetensors"
    with pytest.raises(ModelLoadError) as err:
        load_anima(comfy_source(comfyui_files, tiny_dir, vae=missing), runtime(anima_cache))
    assert "VAE file not found" in str(err.value) and str(missing) in str(err.value)


def test_comfyui_file_in_the_wrong_slot(comfyui_files: ComfyUIFiles, tiny_dir: Path, anima_cache: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_anima(comfy_source(comfyui_files, tiny_dir, text_encoder=comfyui_files.vae), runtime(anima_cache))
    message = str(err.value)
    assert "Qwen3 text encoder" in message and "looks like the VAE" in message
    assert str(comfyui_files.vae) in message and "\n" not in message


def test_comfyui_dit_with_wrong_keys(
    comfyui_files: ComfyUIFiles, tiny_dir: Path, tmp_path: Path, anima_cache: Path
) -> None:
    sd = load_file(str(comfyui_files.diffusion_model))
    del sd["net.blocks.1.cross_attn.q_proj.weight"]
    sd["net.blocks.0.extra_thing.weight"] = torch.zeros(2)
    bad = tmp_path / "anima-broken.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ModelLoadError) as err:
        load_anima(comfy_source(comfyui_files, tiny_dir, diffusion_model=bad), runtime(anima_cache))
    message = str(err.value)
    assert str(bad) in message and "\n" not in message
    assert "1 missing keys (transformer_blocks.1.attn2.to_q.weight)" in message
    assert "1 unexpected keys (transformer_blocks.0.extra_thing.weight)" in message


def test_comfyui_dit_without_adapter(
    comfyui_files: ComfyUIFiles, tiny_dir: Path, tmp_path: Path, anima_cache: Path
) -> None:
    sd = {k: v for k, v in load_file(str(comfyui_files.diffusion_model)).items() if "llm_adapter" not in k}
    bad = tmp_path / "cosmos-predict2.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ModelLoadError, match="llm_adapter"):
        load_anima(comfy_source(comfyui_files, tiny_dir, diffusion_model=bad), runtime(anima_cache))


def test_comfyui_not_a_safetensors_file(
    comfyui_files: ComfyUIFiles, tiny_dir: Path, tmp_path: Path, anima_cache: Path
) -> None:
    bad = tmp_path / "qwen_3_06b_base.safetensors"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelLoadError, match=r"not a readable \.safetensors"):
        load_anima(comfy_source(comfyui_files, tiny_dir, text_encoder=bad), runtime(anima_cache))


def test_comfyui_wrong_config(comfyui_files: ComfyUIFiles, tmp_path: Path, anima_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match="config"):
        load_anima(comfy_source(comfyui_files, tmp_path), runtime(anima_cache))


# ----------------------------------------------------------------------------- progress and cancelling


def test_progress_reports_every_step(backend: AnimaBackend) -> None:
    seen: list[StepProgress] = []
    backend.generate(params(steps=4), progress=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert {p.total for p in seen} == {4}
    assert all(b.elapsed >= a.elapsed >= 0 for a, b in itertools.pairwise(seen))

    seen.clear()
    backend.generate(params(seeds=(1, 2), steps=2), progress=seen.append)
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_at_step_two(backend: AnimaBackend, reference_image: np.ndarray) -> None:
    token = CancelToken()
    seen: list[int] = []

    def on_step(p: StepProgress) -> None:
        seen.append(p.step)
        if p.step == 2:
            token.cancel()

    with pytest.raises(GenerationCancelled):
        backend.generate(params(steps=4), progress=on_step, cancel=token)
    assert seen == [1, 2]
    # The backend is still usable, and the next image is unaffected.
    assert np.array_equal(pixels(backend.generate(params()))[0], reference_image)


def test_cancel_before_start(backend: AnimaBackend) -> None:
    token = CancelToken()
    token.cancel()
    seen: list[StepProgress] = []
    with pytest.raises(GenerationCancelled):
        backend.generate(params(), progress=seen.append, cancel=token)
    assert seen == []


def test_cancellation_is_not_logged_as_an_error(backend: AnimaBackend, caplog: pytest.LogCaptureFixture) -> None:
    token = CancelToken()
    with caplog.at_level("ERROR"), pytest.raises(GenerationCancelled):
        backend.generate(params(steps=3), progress=lambda p: token.cancel(), cancel=token)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# ------------------------------------------------------------------------------------- prompt weights


def test_weight_syntax_changes_the_image(backend: AnimaBackend, reference_image: np.ndarray) -> None:
    weighted = pixels(backend.generate(params(prompt="(1girl:1.5), solo, smile, (@artist:0.3), night sky")))[0]
    plain_text = pixels(backend.generate(params(prompt="1girl, solo, smile, @artist, night sky")))[0]
    assert not np.array_equal(weighted, plain_text)


def test_weight_one_is_the_plain_prompt(backend: AnimaBackend, reference_image: np.ndarray) -> None:
    explicit = "(1girl:1.0), solo, smile, long hair, blue eyes, outdoors, night sky"
    assert np.array_equal(pixels(backend.generate(params(prompt=explicit)))[0], reference_image)


def test_weighted_negative_prompt(backend: AnimaBackend, reference_image: np.ndarray) -> None:
    image = pixels(backend.generate(params(negative="(worst quality:1.4), low quality, blurry")))[0]
    assert image.shape == (64, 64, 3)
    assert not np.array_equal(image, reference_image)


# The weighting rule itself (rows of the LLM adapter's output, Qwen3 states untouched): test_anima_fidelity.py.


# ------------------------------------------------------------------------------------------ lifecycle


def test_offload_activate_unload(tiny_dir: Path, anima_cache: Path) -> None:
    b = load_anima(spec(DirSource(tiny_dir)), runtime(anima_cache))
    b.offload()
    b.activate()
    assert b.generate(params(steps=2))[0].size == (64, 64)
    b.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        b.generate(params(steps=2))
