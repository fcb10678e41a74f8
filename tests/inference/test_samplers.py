"""The SDXL samplers' noise schedules against the one A1111 WebUI / ComfyUI use (k-diffusion's)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from inference.samplers import SAMPLERS, make_scheduler

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json (Animagine XL ships the same values).
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SDXL_SIGMA_MAX = 14.6146


def webui_sigmas(steps: int) -> np.ndarray:
    """k-diffusion's CompVisDenoiser.get_sigmas(steps) (WebUI "Automatic", ComfyUI "normal"), worked out
    here from the betas: t evenly from 999 to 0, log-sigma interpolated between integer timesteps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    log_sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).log()
    t = torch.linspace(999, 0, steps, dtype=torch.float64)
    low = t.floor().long()
    high = (low + 1).clamp(max=999)
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp().numpy()


def sigmas(sampler_id: str, steps: int = 28, config: Any = None) -> np.ndarray:
    scheduler = make_scheduler(sampler_id, config or SDXL_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    return np.asarray(scheduler.sigmas, dtype=np.float64)


@pytest.mark.parametrize("sampler_id", ["euler_a", "euler", "dpmpp_2m", "dpmpp_2m_karras"])
def test_sdxl_samplers_start_at_sigma_max(sampler_id: str) -> None:
    s = sigmas(sampler_id)
    assert s[0] == pytest.approx(SDXL_SIGMA_MAX, abs=1e-3)
    assert s[-1] == 0.0


def test_the_sdxl_config_alone_starts_lower() -> None:
    """What today's code did: the model's own "leading" spacing starts the 28 steps at sigma 10.72."""
    from diffusers import EulerAncestralDiscreteScheduler

    scheduler = EulerAncestralDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    scheduler.set_timesteps(28)
    assert float(scheduler.sigmas[0]) == pytest.approx(10.72, abs=0.01)


@pytest.mark.parametrize("sampler_id", ["euler_a", "euler"])
@pytest.mark.parametrize("steps", [10, 20, 25, 28, 30, 50])
def test_euler_schedules_are_webuis(sampler_id: str, steps: int) -> None:
    s = sigmas(sampler_id, steps)
    assert len(s) == steps + 1
    np.testing.assert_allclose(s[:-1], webui_sigmas(steps), rtol=2e-4)


def test_dpmpp_2m_follows_webui_down_to_its_last_step() -> None:
    """Same start and the same spacing; diffusers' DPM solver only stops one interval before t = 0."""
    s = sigmas("dpmpp_2m")[:-1]
    reference = webui_sigmas(28)
    assert s[0] == pytest.approx(reference[0], rel=1e-4)
    assert np.all(np.diff(s) < 0)
    assert np.abs(s - reference).max() < 0.2  # the last sigma: 0.185 against WebUI's 0.029

    from diffusers import DPMSolverMultistepScheduler

    leading = DPMSolverMultistepScheduler.from_config(SDXL_SCHEDULER_CONFIG, algorithm_type="dpmsolver++")
    leading.set_timesteps(28)
    assert np.abs(np.asarray(leading.sigmas[:-1]) - reference).max() > 3.0  # what the model config gave


def test_karras_spans_the_whole_sigma_range() -> None:
    s = sigmas("dpmpp_2m_karras")[:-1]
    assert s[0] == pytest.approx(SDXL_SIGMA_MAX, abs=1e-3)
    assert s[-1] == pytest.approx(webui_sigmas(2)[-1], rel=1e-3)  # sigma_min, 0.0292


def test_flow_euler_is_untouched() -> None:
    assert dict(SAMPLERS["flow_euler"].scheduler_overrides) == {"shift": 3.0}
