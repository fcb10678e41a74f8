"""The memory-mode arithmetic (inference.memory): which mode a card gets, and what cannot run at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.memory import (
    GIB,
    MEMORY_MODES,
    REFERENCE_FOOTPRINTS,
    choose_mode,
    estimate_peak,
    fitting_mode,
    plan_job,
    reference_footprint,
    resolve_mode,
    step_down,
)
from inference.specs import BuiltinSource, DirSource, ModelSpec

SDXL = REFERENCE_FOOTPRINTS["sdxl"]
ANIMA = REFERENCE_FOOTPRINTS["anima"]


def test_reference_weights_are_the_real_component_sizes() -> None:
    assert SDXL.weights / GIB == pytest.approx(6.46, abs=0.01)
    assert ANIMA.weights / GIB == pytest.approx(5.24, abs=0.01)


TINY = reference_footprint(ModelSpec("t", "sdxl", "animagine-xl-4.0", BuiltinSource("tiny-sdxl"), size_scale=0.125))


@pytest.mark.parametrize("footprint", [SDXL, ANIMA, TINY])
def test_each_mode_needs_less_than_the_one_before(footprint: object) -> None:
    for width, height, count in [(1024, 1024, 1), (832, 1216, 4), (2048, 2048, 1)]:
        peaks = [estimate_peak(footprint, width, height, count, mode) for mode in MEMORY_MODES]  # type: ignore[arg-type]
        assert peaks == sorted(peaks, reverse=True), (width, height, count, peaks)


@pytest.mark.parametrize(
    ("card_gib", "sdxl_mode", "anima_mode"),
    [
        (24, "high", "high"),
        (16, "high", "high"),
        (11.5, "high", "high"),  # a 12 GB card with the desktop elsewhere
        (10, "balanced", "balanced"),
        (8, "low", "balanced"),  # Anima "runs comfortably in 8 GB"; SDXL needs medvram-like offload
        (6, "low", "balanced"),
        (4, "minimal", "minimal"),
    ],
)
def test_auto_picks_by_card_size(card_gib: float, sdxl_mode: str, anima_mode: str) -> None:
    budget = int(card_gib * GIB)
    assert choose_mode(budget, SDXL) == sdxl_mode
    assert choose_mode(budget, ANIMA) == anima_mode


def test_no_budget_means_the_cpu_runs_everything_as_asked() -> None:
    assert choose_mode(None, SDXL) == "high"
    plan = plan_job(None, SDXL, 4096, 4096, 8, "balanced")
    assert plan is not None and (plan.mode, plan.batch) == ("balanced", 8)


def test_a_batch_is_split_before_the_mode_steps_down() -> None:
    budget = int(8 * GIB)
    plan = plan_job(budget, SDXL, 1024, 1024, 8, "low")
    assert plan is not None
    assert plan.mode == "low" and plan.batch < 8
    assert plan.peak <= budget
    assert estimate_peak(SDXL, 1024, 1024, 8, "low", plan.batch * 2) > budget


def test_an_impossible_job_has_no_plan() -> None:
    assert plan_job(int(1 * GIB), SDXL, 1024, 1024, 1) is None
    assert fitting_mode(int(1 * GIB), SDXL, 1024, 1024, 1) is None
    assert fitting_mode(int(2 * GIB), SDXL, 1024, 1024, 1) == "minimal"
    assert fitting_mode(int(4 * GIB), SDXL, 4096, 4096, 1) is None


def test_tiling_only_helps_images_larger_than_a_tile() -> None:
    # SDXL's tiles are 1024 px: balanced decodes a 1024x1024 image whole, a 2048x2048 one in tiles.
    whole = estimate_peak(SDXL, 1024, 1024, 1, "high") - estimate_peak(SDXL, 1024, 1024, 1, "balanced")
    big = estimate_peak(SDXL, 2048, 2048, 1, "high") - estimate_peak(SDXL, 2048, 2048, 1, "balanced")
    assert big > whole * 5


def test_step_down_walks_the_modes_to_the_end() -> None:
    walked = ["high"]
    while (mode := step_down(walked[-1])) is not None:  # type: ignore[arg-type]
        walked.append(mode)
    assert tuple(walked) == MEMORY_MODES


def test_a_configured_mode_wins_over_auto() -> None:
    assert resolve_mode("minimal", int(80 * GIB), SDXL) == "minimal"
    assert resolve_mode("auto", int(80 * GIB), SDXL) == "high"


def test_built_in_models_have_tiny_weights_and_real_working_sets(tmp_path: Path) -> None:
    tiny = reference_footprint(ModelSpec("t", "sdxl", "animagine-xl-4.0", BuiltinSource("tiny-sdxl")))
    real = reference_footprint(ModelSpec("r", "sdxl", "animagine-xl-4.0", DirSource(tmp_path)))
    assert tiny.weights < 0.1 * GIB
    assert real == SDXL
    assert tiny.decode_per_mp == SDXL.decode_per_mp


def test_the_worker_plans_from_the_configured_limit_without_loading(tmp_path: Path) -> None:
    from inference.cache import ModelCache
    from inference.specs import RuntimeOptions
    from inference.worker import GpuWorker

    def never(*args: object) -> object:
        raise AssertionError("planning must not load a model")

    spec = ModelSpec("t", "sdxl", "animagine-xl-4.0", BuiltinSource("tiny-sdxl"), size_scale=0.125)
    runtime = RuntimeOptions("cpu", None, tmp_path, vram_limit=1 * GIB)
    worker = GpuWorker(source=None, cache=ModelCache(runtime, loader=never))  # type: ignore[arg-type]
    small = worker.plan(spec, 128, 128, 4)
    assert small is not None and (small.mode, small.batch) == ("high", 4)
    assert worker.plan(spec, 1024, 1024, 1) is None
    unlimited = GpuWorker(source=None, cache=ModelCache(RuntimeOptions("cpu", None, tmp_path), loader=never))  # type: ignore[arg-type]
    assert unlimited.plan(spec, 4096, 4096, 8) is not None


def test_the_decode_estimate_follows_the_decode_dtype() -> None:
    # Measured on the real-size VAEs (docs/gpu.md): SDXL's fp32 decode 3.75 GiB/MP, in 2-byte floats 2.38;
    # Qwen-Image's bf16 decode 3.94 GiB/MP, in fp32 7.90.
    assert SDXL.decoding_at(4) == SDXL
    assert SDXL.decoding_at(2).decode_per_mp / GIB == pytest.approx(2.38, abs=0.1)
    assert ANIMA.decoding_at(4).decode_per_mp / GIB == pytest.approx(7.90, abs=0.2)


def test_a_model_unloaded_meanwhile_has_its_reference_footprint(tmp_path: Path) -> None:
    from inference.cache import ModelCache
    from inference.specs import RuntimeOptions

    class Unloaded:
        memory_mode = "high"

        def __init__(self, spec: ModelSpec) -> None:
            self.spec = spec

        def footprint(self) -> object:
            raise RuntimeError("model 't' has been unloaded")

    spec = ModelSpec("t", "sdxl", "animagine-xl-4.0", DirSource(tmp_path))
    cache = ModelCache(RuntimeOptions("cpu", None, tmp_path), loader=lambda s, r, p: Unloaded(s))  # type: ignore[arg-type,return-value]
    cache.get(spec)
    assert cache.footprint(spec) == SDXL
