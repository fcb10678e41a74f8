"""What users are told about GPU memory: the pre-flight refusal of a job that cannot fit in any memory mode,
and the memory mode each model runs in (`animebot models`, /model info). Pure: the figures (the device
budget, the model's footprint, the loaded model's mode) are read by the service and passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.core.errors import UserError
from bot.core.messages import render
from inference.memory import MEMORY_MODES, MODE_FEATURES, Footprint, estimate_peak, gib, resolve_mode
from inference.specs import DirSource, HubSource, MemoryMode, MemorySetting, ModelSpec, VaeFileSource, VaeSource

# Where the mode shown comes from: the loaded model's, the configured one, or auto's choice for the memory
# usable now (what it will pick at the next load).
ModeOrigin = Literal["loaded", "config", "auto"]


@dataclass(frozen=True)
class MemoryStatus:
    """A model's memory setting and the mode it runs (or would run) in."""

    setting: MemorySetting
    mode: MemoryMode
    origin: ModeOrigin
    usable: int | None  # bytes of device memory the bot may use now; None: no limit known (the CPU)

    @property
    def features(self) -> tuple[str, ...]:
        return MODE_FEATURES[self.mode]


def least_memory(footprint: Footprint, width: int, height: int, count: int, start: MemoryMode = "high") -> int:
    """The smallest peak a job could have (bytes): one image per pipeline call, in the cheapest of the modes
    the model may step down to from `start` (its mode: a job runs in it or, short of memory, a lower one)."""
    modes = MEMORY_MODES[MEMORY_MODES.index(start) :]
    return min(estimate_peak(footprint, width, height, count, mode, 1) for mode in modes)


def too_large(
    spec: ModelSpec, footprint: Footprint, status: MemoryStatus, width: int, height: int, count: int
) -> UserError:
    """The refusal of a job that fits in no mode: what it needs at least and what is usable."""
    return UserError(
        "job_too_large",
        model=spec.name,
        width=width,
        height=height,
        needed=gib(least_memory(footprint, width, height, count, status.mode)),
        usable=gib(status.usable or 0),
    )


def memory_status(spec: ModelSpec, budget: int | None, footprint: Footprint) -> MemoryStatus:
    """The mode a model that is not loaded runs in: its setting, resolved for `budget` when it is auto (what
    the next load picks). A loaded model's status is MemoryStatus(setting, its memory_mode, "loaded", ...)."""
    origin: ModeOrigin = "auto" if spec.memory == "auto" else "config"
    return MemoryStatus(spec.memory, resolve_mode(spec.memory, budget, footprint), origin, budget)


def describe_vae(vae: VaeSource) -> str:
    if isinstance(vae, HubSource):
        return vae.repo_id
    if isinstance(vae, DirSource | VaeFileSource):
        return str(vae.path)
    raise AssertionError(f"unknown VAE source {vae!r}")


def usable_text(usable: int | None, locale: str) -> str:
    return render("memory_no_limit", locale) if usable is None else gib(usable)


def mode_text(status: MemoryStatus, locale: str) -> str:
    """`high (loaded)`, `low (auto's choice now)`, `balanced (set in the config)`."""
    return render(f"memory_mode_{status.origin}", locale, mode=status.mode)


def memory_lines(
    spec: ModelSpec, status: MemoryStatus, locale: str, missing_samplers: tuple[str, ...] = ()
) -> list[str]:
    """The memory part of /model info: the setting and mode, the mode's features, the VAE override, and
    the samplers the model card recommends that diffusers lacks."""
    lines = [
        render(
            "model_info_memory",
            locale,
            setting=status.setting,
            mode=mode_text(status, locale),
            usable=usable_text(status.usable, locale),
        ),
        render("model_info_features", locale, features=", ".join(status.features)),
    ]
    if spec.vae is not None:
        lines.append(render("model_info_vae", locale, vae=describe_vae(spec.vae)))
    if missing_samplers:
        lines.append(render("model_info_missing_sampler", locale, samplers=", ".join(missing_samplers)))
    return lines
