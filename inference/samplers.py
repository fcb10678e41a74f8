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


# Noise schedules as A1111 WebUI and ComfyUI run SDXL samplers. diffusers' SDXL scheduler config says
# timestep_spacing = "leading", whose first sigma at 28 steps is 10.72; WebUI ("Automatic" schedule) and
# ComfyUI ("normal") start at the model's sigma_max, 14.61, and space the timesteps evenly from 999 down to 0.
# For the Euler schedulers that is exactly diffusers' "linspace" (to 1e-4 at any step count). The DPM solver's
# "linspace" and "trailing" both start at sigma_max but stop one interval before t=0 (a last sigma of 0.19
# instead of 0.03 at 28 steps); "trailing" is the nearer of the two and is ComfyUI's "simple" schedule.
# Karras sigmas span the model's whole sigma range whatever the spacing. See docs/fidelity.md.
WEBUI_EULER_SPACING = (("timestep_spacing", "linspace"),)
WEBUI_DPM_SPACING = (("timestep_spacing", "trailing"),)

SAMPLERS: dict[str, Sampler] = {
    s.id: s
    for s in (
        Sampler("euler_a", "Euler a", ("sdxl",), "EulerAncestralDiscreteScheduler", WEBUI_EULER_SPACING),
        Sampler("euler", "Euler", ("sdxl",), "EulerDiscreteScheduler", WEBUI_EULER_SPACING),
        Sampler(
            "dpmpp_2m", "DPM++ 2M", ("sdxl",), "DPMSolverMultistepScheduler",
            (("algorithm_type", "dpmsolver++"), ("use_karras_sigmas", False), *WEBUI_DPM_SPACING),
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
