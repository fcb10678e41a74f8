"""Sampler ids used in dialect files, the CLI and PNG metadata, and the scheduler each one means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.specs import Family


@dataclass(frozen=True)
class Sampler:
    id: str
    label: str  # the A1111 name written into PNG metadata ("Euler a")
    families: tuple[Family, ...]
    scheduler_class: str  # a diffusers scheduler class name
    scheduler_overrides: tuple[tuple[str, Any], ...] = ()


SAMPLERS: dict[str, Sampler] = {
    s.id: s
    for s in (
        Sampler("euler_a", "Euler a", ("sdxl",), "EulerAncestralDiscreteScheduler"),
        Sampler("euler", "Euler", ("sdxl",), "EulerDiscreteScheduler"),
        Sampler(
            "dpmpp_2m", "DPM++ 2M", ("sdxl",), "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("use_karras_sigmas", False)),
        ),
        Sampler(
            "dpmpp_2m_karras", "DPM++ 2M Karras", ("sdxl",), "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("use_karras_sigmas", True)),
        ),
        # Anima is a flow-matching model: discrete flow shift 3 as in the official ComfyUI templates.
        Sampler("flow_euler", "Euler", ("anima",), "FlowMatchEulerDiscreteScheduler", (("shift", 3.0),)),
    )
}


def samplers_for(family: Family) -> list[Sampler]:
    return [s for s in SAMPLERS.values() if family in s.families]


def require_sampler(sampler_id: str, family: Family) -> Sampler:
    """The sampler `sampler_id`; ValueError when there is none or it cannot run `family` models."""
    sampler = SAMPLERS.get(sampler_id)
    if sampler is None or family not in sampler.families:
        usable = ", ".join(s.id for s in samplers_for(family))
        raise ValueError(f"sampler {sampler_id!r} cannot run {family} models (usable: {usable})")
    return sampler


def make_scheduler(sampler_id: str, base_config: Any) -> Any:
    """A fresh scheduler for `sampler_id`, built from a pipeline's scheduler config."""
    import diffusers

    sampler = SAMPLERS[sampler_id]
    cls = getattr(diffusers, sampler.scheduler_class)
    return cls.from_config(base_config, **dict(sampler.scheduler_overrides))
