"""ModelSpec.vae: a VAE that replaces the SDXL model's own (the fp16-fix one), from a diffusers folder, a whole
pipeline folder's vae/, or one .safetensors file in the original (LDM) key layout; its config's force_upcast
decides the fp32 decode, and the footprint's decode working set follows it. Tiny VAEs built in code."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from inference.backends.sdxl import SDXLBackend, load_sdxl
from inference.memory import reference_footprint
from inference.specs import BuiltinSource, DirSource, HubSource, ModelSpec, RuntimeOptions, VaeFileSource, VaeSource
from inference.tiny.sdxl import ensure_tiny_sdxl
from inference.types import GenerationParams, ModelLoadError
from tests.inference.sdxl_checkpoint import VAE, vae_to_ldm

PARAMS = GenerationParams("1girl, smile", "lowres", 64, 64, 2, 5.0, (3,), "euler_a")


def spec(vae: VaeSource | None = None) -> ModelSpec:
    return ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory="high", vae=vae)


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> RuntimeOptions:
    return RuntimeOptions(device="cpu", dtype=None, cache_dir=tmp_path_factory.mktemp("models"), local_files_only=True)


@pytest.fixture(scope="module")
def tiny_dir(runtime: RuntimeOptions) -> Path:
    return ensure_tiny_sdxl(runtime.cache_dir)


@pytest.fixture(scope="module")
def fixed_vae(tiny_dir: Path) -> Any:
    """A VAE like the tiny model's, with other weights and `force_upcast: false` (what the fp16-fix VAE says)."""
    config = dict(AutoencoderKL.load_config(str(tiny_dir / "vae")))
    config["force_upcast"] = False
    torch.manual_seed(99)
    vae = AutoencoderKL.from_config(config)
    assert isinstance(vae, AutoencoderKL)
    return vae


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory: pytest.TempPathFactory, fixed_vae: Any) -> Path:
    folder = tmp_path_factory.mktemp("vae-fp16-fix")
    fixed_vae.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory: pytest.TempPathFactory, fixed_vae: Any) -> Path:
    """The VAE as WebUI's models/VAE holds it: one file, LDM key names without the first_stage_model. prefix."""
    state = {k: v.detach().clone().contiguous() for k, v in fixed_vae.state_dict().items()}
    ldm = {key.removeprefix(VAE): value for key, value in vae_to_ldm(state, fixed_vae.config).items()}
    path = tmp_path_factory.mktemp("vae-file") / "sdxl_vae_fp16_fix.safetensors"
    save_file(ldm, str(path))
    return path


def same_weights(a: Any, b: Any) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k].to(left[k].dtype)) for k in left)


def pixels(backend: SDXLBackend) -> np.ndarray:
    return np.asarray(backend.generate(PARAMS)[0])


@pytest.fixture(scope="module")
def own(runtime: RuntimeOptions) -> SDXLBackend:
    return load_sdxl(spec(), runtime)


def test_a_vae_folder_replaces_the_models_vae(
    runtime: RuntimeOptions, own: SDXLBackend, vae_folder: Path, fixed_vae: Any
) -> None:
    loaded = load_sdxl(spec(DirSource(vae_folder)), runtime)
    vae = loaded.pipeline.vae
    assert same_weights(vae, fixed_vae)
    assert vae.config.force_upcast is False
    assert vae.dtype == loaded.pipeline.unet.dtype
    assert vae.use_slicing  # the memory mode's features apply to the new VAE
    assert not np.array_equal(pixels(loaded), pixels(own))  # it is the one that decodes


def test_a_pipeline_folder_lends_its_vae(runtime: RuntimeOptions, own: SDXLBackend, tiny_dir: Path) -> None:
    loaded = load_sdxl(spec(DirSource(tiny_dir)), runtime)
    assert same_weights(loaded.pipeline.vae, own.pipeline.vae)
    assert np.array_equal(pixels(loaded), pixels(own))


def test_a_single_vae_file_in_the_original_layout(
    runtime: RuntimeOptions, vae_file: Path, vae_folder: Path, fixed_vae: Any
) -> None:
    from_file = load_sdxl(spec(VaeFileSource(vae_file)), runtime)
    assert same_weights(from_file.pipeline.vae, fixed_vae)
    from_folder = load_sdxl(spec(DirSource(vae_folder)), runtime)
    assert np.array_equal(pixels(from_file), pixels(from_folder))


@pytest.mark.filterwarnings("ignore")  # diffusers warns about fp16 on the CPU
def test_a_vae_that_needs_no_upcast_lowers_the_decode_estimate(runtime: RuntimeOptions, vae_folder: Path) -> None:
    half = replace(runtime, dtype="float16")
    reference = reference_footprint(spec()).decode_per_mp
    own = load_sdxl(spec(), half)
    assert own.pipeline.vae.dtype == torch.float16 and own.pipeline.vae.config.force_upcast
    assert own.footprint().decode_per_mp == reference  # decoded in fp32
    fixed = load_sdxl(spec(DirSource(vae_folder)), half)
    assert fixed.pipeline.vae.dtype == torch.float16
    assert fixed.footprint().decode_per_mp == int(reference * 0.64)  # decoded in fp16 (measured ratio)
    # The pre-flight check reads it from the event loop, also while a decode holds the VAE in fp32: the
    # footprint is the loaded model's, not that moment's.
    measured = fixed.footprint()
    fixed.pipeline.vae.to(torch.float32)
    assert fixed.footprint() == measured


def test_errors_name_the_vae(runtime: RuntimeOptions, tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"VAE folder .*nowhere does not exist"):
        load_sdxl(spec(DirSource(tmp_path / "nowhere")), runtime)
    with pytest.raises(ModelLoadError, match=r"VAE file .*missing.safetensors does not exist"):
        load_sdxl(spec(VaeFileSource(tmp_path / "missing.safetensors")), runtime)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"VAE folder .*empty has no config.json"):
        load_sdxl(spec(DirSource(tmp_path / "empty")), runtime)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"could not load VAE file .*corrupt.safetensors"):
        load_sdxl(spec(VaeFileSource(corrupt)), runtime)
    with pytest.raises(ModelLoadError, match=r"could not load VAE nobody/no-such-vae"):
        load_sdxl(spec(HubSource("nobody/no-such-vae")), runtime)  # local_files_only: not in the cache


def test_a_vae_with_other_latent_channels_is_refused(runtime: RuntimeOptions, tiny_dir: Path, tmp_path: Path) -> None:
    config = dict(AutoencoderKL.load_config(str(tiny_dir / "vae")))
    config["latent_channels"] = 16  # a Flux / SD3 VAE
    AutoencoderKL.from_config(config).save_pretrained(str(tmp_path / "flux-vae"))
    with pytest.raises(ModelLoadError, match="has 16 latent channels; this model needs 4"):
        load_sdxl(spec(DirSource(tmp_path / "flux-vae")), runtime)
