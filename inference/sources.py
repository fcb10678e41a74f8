"""Describing where a model comes from and whether it is there, without loading anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.specs import (
    BuiltinSource,
    ComfyUISource,
    DirSource,
    HubSource,
    ModelSource,
    SingleFileSource,
)

_INDEX_FILES = ("model_index.json", "modular_model_index.json")


@dataclass(frozen=True)
class SourceState:
    description: str  # where the weights come from
    state: str  # short word: "ready", "missing", "not built yet", ...
    available: bool  # False when loading is certain to fail


def _has_index(path: Path) -> bool:
    return any((path / name).is_file() for name in _INDEX_FILES)


def describe_source(source: ModelSource, cache_dir: Path) -> SourceState:
    if isinstance(source, BuiltinSource):
        built = _has_index(cache_dir / source.name)
        return SourceState(
            f"built-in tiny model ({cache_dir / source.name})",
            "ready" if built else "built on first use",
            True,
        )
    if isinstance(source, DirSource):
        if _has_index(source.path):
            return SourceState(f"diffusers folder {source.path}", "ready", True)
        state = "no model_index.json" if source.path.is_dir() else "missing"
        return SourceState(f"diffusers folder {source.path}", state, False)
    if isinstance(source, SingleFileSource):
        found = source.path.is_file()
        return SourceState(f"single file {source.path}", "ready" if found else "missing", found)
    if isinstance(source, ComfyUISource):
        files = (source.diffusion_model, source.text_encoder, source.vae)
        missing = [p.name for p in files if not p.is_file()]
        where = f"ComfyUI files in {source.diffusion_model.parent.parent}"
        if missing:
            return SourceState(where, "missing " + ", ".join(missing), False)
        return SourceState(where, "ready", True)
    if isinstance(source, HubSource):
        return SourceState(f"hub {source.repo_id}", _hub_state(source), True)
    raise TypeError(f"unknown source {source!r}")


def _hub_state(source: HubSource) -> str:
    from huggingface_hub import try_to_load_from_cache

    for name in _INDEX_FILES:
        found = try_to_load_from_cache(source.repo_id, name, revision=source.revision)
        if isinstance(found, str):
            return "in local cache"
    return "downloads on first use"
