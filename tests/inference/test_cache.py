"""The model cache: LRU eviction, offloading inactive models, reloading when a spec changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.cache import ModelCache
from inference.specs import BuiltinSource, DirSource, ModelSpec, RuntimeOptions
from inference.types import LoadProgressCallback, ModelLoadError

RUNTIME = RuntimeOptions("cpu", None, Path("/nonexistent"))


class RecordingBackend:
    """Records what the cache does to it (a real backend moves weights; here we only watch)."""

    def __init__(self, spec: ModelSpec, log: list[str]) -> None:
        self.spec = spec
        self.log = log

    def generate(self, *args: object, **kwargs: object) -> list[object]:
        raise NotImplementedError

    def offload(self) -> None:
        self.log.append(f"offload {self.spec.name}")

    def activate(self) -> None:
        self.log.append(f"activate {self.spec.name}")

    def unload(self) -> None:
        self.log.append(f"unload {self.spec.name}")


def spec(name: str, path: str = "/m") -> ModelSpec:
    return ModelSpec(name, "sdxl", "animagine-xl-4.0", DirSource(Path(path)))


@pytest.fixture
def log() -> list[str]:
    return []


def make_cache(log: list[str], capacity: int, location: str = "cpu") -> ModelCache:
    def loader(s: ModelSpec, runtime: RuntimeOptions, progress: LoadProgressCallback | None) -> RecordingBackend:
        if s.name == "broken":
            raise ModelLoadError("no such file")
        log.append(f"load {s.name}")
        return RecordingBackend(s, log)

    return ModelCache(RUNTIME, capacity, location, loader)  # type: ignore[arg-type]


def test_switching_back_reuses_the_loaded_model(log: list[str]) -> None:
    cache = make_cache(log, capacity=2)
    a = cache.get(spec("a"))
    cache.get(spec("b"))
    assert cache.get(spec("a")) is a
    assert log == ["load a", "offload a", "load b", "offload b", "activate a"]
    assert cache.active == "a"


def test_least_recently_used_is_evicted(log: list[str]) -> None:
    cache = make_cache(log, capacity=2)
    cache.get(spec("a"))
    cache.get(spec("b"))
    cache.get(spec("a"))
    cache.get(spec("c"))
    assert "unload b" in log and "unload a" not in log
    assert cache.names() == ["a", "c"]


def test_device_location_keeps_models_on_the_device(log: list[str]) -> None:
    cache = make_cache(log, capacity=2, location="device")
    cache.get(spec("a"))
    cache.get(spec("b"))
    cache.get(spec("a"))
    assert not any(entry.startswith("offload") for entry in log)


def test_changed_spec_under_the_same_name_is_reloaded(log: list[str]) -> None:
    cache = make_cache(log, capacity=2)
    first = cache.get(spec("a", "/old"))
    second = cache.get(spec("a", "/new"))
    assert first is not second
    assert log == ["load a", "unload a", "load a"]


def test_failed_load_leaves_no_entry(log: list[str]) -> None:
    cache = make_cache(log, capacity=2)
    cache.get(spec("a"))
    with pytest.raises(ModelLoadError):
        cache.get(spec("broken"))
    assert cache.names() == ["a"]
    assert cache.get(spec("a")) is not None
    assert log[-1] == "activate a"


def test_builtin_spec_is_hashable_and_comparable() -> None:
    s = ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4.0", BuiltinSource("tiny-sdxl"), 0.125)
    assert {s: 1}[ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4.0", BuiltinSource("tiny-sdxl"), 0.125)] == 1
