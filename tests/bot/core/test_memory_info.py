"""bot/core/memory_info.py: the figure the refusal quotes agrees with the plan that refused, and the status
shown for a model that is not loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.memory_info import least_memory, memory_lines, memory_status, too_large
from inference.memory import GIB, MEMORY_MODES, plan_job, reference_footprint
from inference.specs import BuiltinSource, HubSource, MemoryMode, ModelSpec, VaeFileSource

REAL = ModelSpec("xl", "sdxl", "animagine-xl-4.0", HubSource("cagliostrolab/animagine-xl-4.0"))
ANIMA = ModelSpec("anima", "anima", "anima", HubSource("circlestone-labs/Anima"))
TINY = ModelSpec("tiny", "sdxl", "animagine-xl-4.0", BuiltinSource("tiny-sdxl"), 0.25)


@pytest.mark.parametrize("spec", [REAL, ANIMA, TINY])
@pytest.mark.parametrize("start", MEMORY_MODES)
def test_a_job_is_refused_exactly_when_its_least_memory_exceeds_the_budget(spec: ModelSpec, start: MemoryMode) -> None:
    """The message never says "needs 0.1 GiB, 0.2 GiB usable": what it quotes is what the plan needed."""
    footprint = reference_footprint(spec)
    edge = footprint.typical_px
    for budget_gib in (0.05, 0.12, 0.2, 0.3, 0.5, 1, 1.5, 2, 4, 6, 8, 12, 24):
        budget = int(budget_gib * GIB)
        for scale in (0.25, 0.5, 1, 1.5, 2):
            width = height = int(edge * scale)
            for count in (1, 4):
                refused = plan_job(budget, footprint, width, height, count, start) is None
                assert refused == (least_memory(footprint, width, height, count, start) > budget)


def test_the_refusal_quotes_needed_and_usable() -> None:
    status = memory_status(REAL, 2 * GIB, reference_footprint(REAL))
    assert (status.mode, status.origin) == ("minimal", "auto")
    error = too_large(REAL, reference_footprint(REAL), status, 2048, 2048, 1)
    assert error.key == "job_too_large"
    assert error.params["usable"] == "2.0 GiB" and error.params["needed"] == "3.0 GiB"
    assert str(error).startswith("xl cannot make a 2048x2048 image on this bot's GPU: it needs about 3.0 GiB")


def test_status_lines_of_a_configured_mode_and_a_vae_file() -> None:
    vae = VaeFileSource(Path("/v.safetensors"))
    spec = ModelSpec("xl", "sdxl", "animagine-xl-4.0", REAL.source, memory="low", vae=vae)
    status = memory_status(spec, None, reference_footprint(spec))
    assert (status.mode, status.origin, status.usable) == ("low", "config", None)
    assert memory_lines(spec, status, "en") == [
        "Memory: low · runs in low mode (set in the config) · usable: no limit",
        "Mode features: vae slicing, vae tiling, model cpu offload",
        "VAE: /v.safetensors",
    ]
