"""LoRAs applied to a loaded pipeline for one job, through diffusers' LoRA loaders (peft).

`LoraAdapters(pipe)` belongs to a backend; its `applied(loras)` context wraps the pipeline calls of one generate:

    with self.adapters.applied(loras):
        pipe(...)

Inside, each LoRA is a peft adapter of the pipeline's models, active at its weight (`set_adapters`). After it, every
adapter is disabled (`disable_lora`): peft's layers then run only their base layer, so the next image without a
LoRA is bit-identical to one made before any LoRA was loaded. Adapters stay loaded (an LRU of `capacity`, keyed by
the file's SHA-256): the same LoRA in the next job is not read again (`loads` counts the reads, for tests).

Files: SDXL LoRAs in kohya/WebUI layout (lora_unet_*, lora_te1_*, lora_te2_*: diffusers converts them) or diffusers
layout (unet.*, text_encoder.*), through StableDiffusionXLLoraLoaderMixin; Anima LoRAs in diffusers layout
(transformer.*, text_conditioner.*) or ComfyUI/diffusion-pipe layout (diffusion_model.*), through
AnimaModularPipeline's AnimaLoraLoaderMixin. diffusers 0.42 cannot read kohya's own Anima layout (lora_unet_blocks_*):
such a file is refused with a message saying so (docs/loras.md).

Memory modes (inference.offload): the loaders' own `load_lora_weights` takes every accelerate hook off the pipeline
when it finds one and puts back `enable_model_cpu_offload()`, on the default device: that would turn balanced mode
(hooks on the text encoders only) into low mode, and the modular Anima pipeline's hand-made chain into something
else. So the adapters are loaded into each model with the mixin's per-model loaders and no pipeline (`_pipeline=None`:
nothing is taken off): peft creates each LoRA layer on the device and in the dtype of the layer it wraps (the CPU while
a model waits there in balanced/low mode, and accelerate's hook moves the whole module, LoRA included, when it runs).
Group offloading (minimal mode) hooks leaf modules, and the new LoRA layers are new leaves: those models get their
group offloading applied again (diffusers' `_maybe_remove_and_reapply_group_offloading`, as its loaders do), so the
LoRA layers move with the rest. A memory-mode switch later re-places everything, LoRA layers included.
Dtype: each LoRA layer takes the dtype of the layer it wraps (fp16 or bf16 on CUDA, whatever the file holds), so the
delta is computed in the model's precision, as WebUI and ComfyUI do (tests/inference/test_lora_adapters.py checks
bf16). torch.compile'd models (spec.compile) recompile once when a LoRA first changes their modules.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from inference.loras import LoraLoadError, combine_loras, safetensors_keys
from inference.types import LoraFile, error_summary

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4  # adapters kept loaded per pipeline (a typical SDXL LoRA: 20-200 MB)


def adapter_name(sha256: str) -> str:
    """The peft adapter name of a file: a module-name-safe id (peft stores adapters in ModuleDicts)."""
    return f"lora_{sha256[:16]}"


class LoraAdapters:
    """The LoRAs loaded into one pipeline (SDXL's StableDiffusionXLPipeline or Anima's AnimaModularPipeline)."""

    def __init__(self, pipe: Any, capacity: int = DEFAULT_CAPACITY) -> None:
        self._pipe = pipe
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, str] = OrderedDict()  # sha256 -> adapter name, least recently used first
        self.loads = 0  # files read and loaded into the pipeline (a cache hit does not count)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The SHA-256 of every LoRA loaded now, least recently used first."""
        return tuple(self._loaded)

    @contextlib.contextmanager
    def applied(self, loras: Sequence[LoraFile]) -> Iterator[None]:
        """The pipeline with `loras` active at their weights inside the block, exactly as before after it (also
        when the block or a load raises). Raises LoraLoadError (a file that cannot be used on this model)."""
        if not loras:
            yield
            return
        wanted = combine_loras(loras)
        if len(wanted) > self.capacity:
            raise LoraLoadError(f"At most {self.capacity} different LoRAs can be used in one job on this worker.")
        names = [self._ensure(lora, keep={w.sha256 for w in wanted}) for lora in wanted]
        pipe = self._pipe
        try:
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=[float(lora.weight) for lora in wanted])
            yield
        finally:
            pipe.disable_lora()

    def clear(self) -> None:
        """Delete every loaded adapter and take peft's wrappers off the models: each layer is again the module
        it was before the first LoRA (deleting single adapters, as the LRU does, leaves the empty wrappers)."""
        for sha256 in list(self._loaded):
            self._delete(sha256)
        if any(_is_peft_layer(m) for model in self._models() for m in model.modules()):
            self._pipe.unload_lora_weights()
            self._reapply_group_offloading()

    # -- internals ----------------------------------------------------------------------------------------

    def _ensure(self, lora: LoraFile, keep: set[str]) -> str:
        name = self._loaded.get(lora.sha256)
        if name is not None:
            self._loaded.move_to_end(lora.sha256)
            return name
        while len(self._loaded) >= self.capacity:
            victim = next((sha for sha in self._loaded if sha not in keep), None)
            if victim is None:
                break
            self._delete(victim)
        name = adapter_name(lora.sha256)
        if name in self._adapters():  # loaded by an earlier LoraAdapters of this pipeline: the same file's bytes
            self._loaded[lora.sha256] = name
            return name
        try:
            with warnings.catch_warnings():  # peft's note that a model holds several adapters: by design here
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                self._load(lora, name)
        except LoraLoadError:
            self._forget(name)
            raise
        except Exception as e:  # a damaged file, a layout the loaders cannot read, out of memory
            self._forget(name)
            log.warning("LoRA %s (%s) could not be loaded", lora.name, lora.path, exc_info=e)
            raise LoraLoadError(f"The LoRA {lora.name} could not be loaded ({error_summary(e, 160)}).") from None
        if name not in self._adapters():
            self._forget(name)
            raise LoraLoadError(
                f"The LoRA {lora.name} has no weights this model can use (a LoRA for another model family?)."
            )
        self.loads += 1
        self._loaded[lora.sha256] = name
        return name

    def _load(self, lora: LoraFile, name: str) -> None:
        pipe = self._pipe
        if not lora.path.is_file():
            raise LoraLoadError(f"The LoRA {lora.name} is not on this worker.")
        if hasattr(pipe, "text_conditioner"):  # Anima (AnimaLoraLoaderMixin)
            keys = safetensors_keys(lora.path)
            if any(key.startswith(("lora_unet_", "lora_te")) for key in keys):
                raise LoraLoadError(
                    f"The LoRA {lora.name} is in kohya's Anima layout (lora_unet_...), which diffusers cannot "
                    "load for Anima; use a diffusers or ComfyUI-format file."
                )
            state, metadata = pipe.lora_state_dict(str(lora.path), return_lora_metadata=True)
            _check_format(state, lora.name)
            for prefix, loader, module in (
                ("transformer", pipe.load_lora_into_transformer, pipe.transformer),
                ("text_conditioner", pipe.load_lora_into_text_conditioner, pipe.text_conditioner),
            ):
                part = {k: v for k, v in state.items() if k.startswith(f"{prefix}.")}
                if part:
                    kwargs: dict[str, Any] = {prefix: module}
                    loader(part, adapter_name=name, metadata=metadata, _pipeline=None, **kwargs)
        else:  # SDXL (StableDiffusionXLLoraLoaderMixin)
            state, alphas, metadata = pipe.lora_state_dict(
                str(lora.path), unet_config=pipe.unet.config, return_lora_metadata=True
            )
            _check_format(state, lora.name)
            pipe.load_lora_into_unet(
                state, network_alphas=alphas, unet=pipe.unet, adapter_name=name, metadata=metadata, _pipeline=None
            )
            for prefix, encoder in (("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
                if encoder is not None and any(k.startswith(f"{prefix}.") for k in state):
                    pipe.load_lora_into_text_encoder(
                        state,
                        network_alphas=alphas,
                        text_encoder=encoder,
                        prefix=prefix,
                        lora_scale=1.0,
                        adapter_name=name,
                        metadata=metadata,
                        _pipeline=None,
                    )
        self._reapply_group_offloading()

    def _adapters(self) -> set[str]:
        return {name for names in self._pipe.get_list_adapters().values() for name in names}

    def _delete(self, sha256: str) -> None:
        name = self._loaded.pop(sha256)
        self._forget(name)

    def _forget(self, name: str) -> None:
        """Remove adapter `name` from every model that has it (a half-finished load included)."""
        if name in self._adapters():
            try:
                self._pipe.delete_adapters(name)
            except Exception:  # never hide the error that brought us here
                log.exception("LoRA adapter %s could not be deleted", name)
        self._reapply_group_offloading()

    def _reapply_group_offloading(self) -> None:
        from diffusers.hooks.group_offloading import (
            _is_group_offload_enabled,
            _maybe_remove_and_reapply_group_offloading,
        )

        for component in self._models():
            if _is_group_offload_enabled(component):
                _maybe_remove_and_reapply_group_offloading(component)

    def _models(self) -> list[torch.nn.Module]:
        return [c for c in self._pipe.components.values() if isinstance(c, torch.nn.Module)]


def _is_peft_layer(module: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _check_format(state: dict[str, Any], name: str) -> None:
    if not state:
        raise LoraLoadError(f"The LoRA {name} holds no weights.")
    if not all("lora" in key for key in state):
        odd = next(key for key in state if "lora" not in key)
        raise LoraLoadError(f"The LoRA {name} is not in a layout diffusers can read (a key such as {odd!r}).")
