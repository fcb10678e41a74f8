"""A small LRU cache of loaded models, so switching back to a recent model is fast."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from inference.backends.base import Backend
from inference.memory import Footprint, reference_footprint
from inference.registry import load_backend
from inference.specs import ModelSpec, RuntimeOptions
from inference.types import LoadProgressCallback

Loader = Callable[[ModelSpec, RuntimeOptions, LoadProgressCallback | None], Backend]


class ModelCache:
    """Keeps up to `capacity` loaded models. Only the model last asked for sits on the device; the
    others wait in RAM (location "cpu") or stay on the device too (location "device", for GPUs with
    room for several). Not thread-safe: one worker thread owns it."""

    def __init__(
        self,
        runtime: RuntimeOptions,
        capacity: int = 2,
        location: Literal["cpu", "device"] = "cpu",
        loader: Loader = load_backend,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.runtime = runtime
        self.capacity = capacity
        self.location = location
        self._loader = loader
        self._entries: OrderedDict[str, tuple[ModelSpec, Backend]] = OrderedDict()
        self._active: str | None = None

    def names(self) -> list[str]:
        """Cached model names, most recently used last."""
        return list(self._entries)

    @property
    def active(self) -> str | None:
        return self._active

    def get(self, spec: ModelSpec, on_progress: LoadProgressCallback | None = None) -> Backend:
        """The loaded model for `spec`, on the device, loading it (and evicting the oldest) if needed.

        If loading fails the cache is as it was, apart from models already offloaded to make room."""
        entry = self._entries.get(spec.name)
        if entry is not None and entry[0] != spec:  # the config changed under this name
            self.evict(spec.name)
            entry = None
        if entry is not None:
            self._entries.move_to_end(spec.name)
            if self._active != spec.name:
                self._park_active()
                entry[1].activate()
                self._active = spec.name
            return entry[1]

        self._park_active()
        while len(self._entries) >= self.capacity:
            self.evict(next(iter(self._entries)))
        backend = self._loader(spec, self.runtime, on_progress)
        self._entries[spec.name] = (spec, backend)
        self._active = spec.name
        return backend

    def _park_active(self) -> None:
        """With location "cpu", move the active model to RAM. With "device" it stays where it is."""
        if self.location != "cpu" or self._active is None:
            return
        entry = self._entries.get(self._active)
        if entry is not None:
            entry[1].offload()
        self._active = None

    def loaded(self, spec: ModelSpec) -> Backend | None:
        """The loaded model for `spec` if the cache holds it (on the device or parked), else None."""
        entry = self._entries.get(spec.name)
        return entry[1] if entry is not None and entry[0] == spec else None

    def footprint(self, spec: ModelSpec) -> Footprint:
        """The measured footprint of `spec` when it is loaded, the reference one before. Also called from the
        event loop (the pre-flight check) while the worker thread may be unloading the model."""
        backend = self.loaded(spec)
        if backend is not None:
            try:
                return backend.footprint()
            except RuntimeError:  # unloaded by the worker thread in the meantime
                pass
        return reference_footprint(spec)

    def evict(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        entry[1].unload()  # which also gives the device memory back
        if self._active == name:
            self._active = None

    def clear(self) -> None:
        for name in list(self._entries):
            self.evict(name)
