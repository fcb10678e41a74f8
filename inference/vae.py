"""A VAE that replaces an SDXL model's own (ModelSpec.vae), e.g. madebyollin/sdxl-vae-fp16-fix.

SDXL's original VAE overflows in fp16, so its config says `force_upcast: true` and diffusers' SDXL pipeline
casts it to fp32 for every decode (StableDiffusionXLPipeline.__call__: `needs_upcasting = vae.dtype == fp16
and vae.config.force_upcast`): an fp32 decode of a 1024x1024 image needs about 3.8 GiB on top of the weights.
The fp16-fix VAE was fine-tuned to keep its activations in fp16 range and its config says `force_upcast:
false`, so diffusers decodes it in fp16: half the decode memory, faster, and the same images up to fp16
rounding. The replacement is loaded at the pipeline's dtype; its config decides the upcast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from inference.specs import DirSource, HubSource, VaeFileSource, VaeSource
from inference.types import ModelLoadError, error_summary


def describe_vae(source: VaeSource) -> str:
    """How an error message names the VAE."""
    if isinstance(source, HubSource):
        revision = f"@{source.revision}" if source.revision else ""
        return f"VAE {source.repo_id}{revision}"
    if isinstance(source, DirSource):
        return f"VAE folder {source.path}"
    return f"VAE file {source.path}"


def decodes_without_upcast(vae: Any) -> bool:
    """True when diffusers decodes with this VAE at its own dtype (no fp32 copy for the decode)."""
    return vae.dtype != torch.float16 or not bool(getattr(vae.config, "force_upcast", False))


def load_vae(source: VaeSource, dtype: torch.dtype, like: Any, local_files_only: bool) -> Any:
    """Load `source` as an AutoencoderKL at `dtype`, checked against `like` (the pipeline's own VAE: its
    latent channels must match). A single file takes its architecture from `like`'s config, so no config is
    downloaded. Every failure is a ModelLoadError that names the VAE."""
    what = describe_vae(source)
    try:
        vae = _load(source, dtype, like, local_files_only)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load {what}: {error_summary(exc)}") from exc
    if not isinstance(vae, AutoencoderKL):
        raise ModelLoadError(f"{what} is a {type(vae).__name__}, not an SDXL VAE (AutoencoderKL)")
    expected, got = like.config.latent_channels, vae.config.latent_channels  # type: ignore[attr-defined]
    if expected != got:
        raise ModelLoadError(f"{what} has {got} latent channels; this model needs {expected}")
    return vae


def _load(source: VaeSource, dtype: torch.dtype, like: Any, local_files_only: bool) -> Any:
    if isinstance(source, HubSource):
        return AutoencoderKL.from_pretrained(
            source.repo_id,
            revision=source.revision,
            variant=source.variant,
            dtype=dtype,
            local_files_only=local_files_only,
        )
    path = Path(source.path).expanduser()
    if isinstance(source, DirSource):
        if not path.is_dir():
            raise ModelLoadError(f"{describe_vae(source)} does not exist")
        # A VAE folder, or a whole diffusers pipeline folder whose vae/ is taken.
        subfolder = "vae" if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file() else None
        if subfolder is None and not (path / "config.json").is_file():
            raise ModelLoadError(f"{describe_vae(source)} has no config.json (not a diffusers-format VAE)")
        return AutoencoderKL.from_pretrained(str(path), subfolder=subfolder, dtype=dtype, local_files_only=True)
    if isinstance(source, VaeFileSource):
        if not path.is_file():
            raise ModelLoadError(f"{describe_vae(source)} does not exist")
        with tempfile.TemporaryDirectory(prefix="animebot-vae-") as config_dir:
            like.save_config(config_dir)
            return AutoencoderKL.from_single_file(str(path), config=config_dir, dtype=dtype, local_files_only=True)
    raise ModelLoadError(f"{type(source).__name__} cannot hold a VAE")
