"""inference.img2img without a model: the passes of a job, the steps each pipeline runs at a strength, the one
counter over passes and images, and the Lanczos resize."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from inference.img2img import (
    Pass,
    PassProgress,
    anima_img2img_steps,
    plan_passes,
    resized,
    sdxl_img2img_schedule,
    sdxl_img2img_steps,
)
from inference.types import GenerationParams, HiresFix, SourceImage, StepProgress

PARAMS = GenerationParams("p", "n", 832, 1216, 28, 5.0, (1, 2), "euler_a")


@pytest.mark.parametrize(
    ("steps", "strength", "sdxl", "anima"),
    [(28, 1.0, 28, 28), (28, 0.35, 9, 10), (28, 0.55, 15, 16), (10, 0.3, 3, 3), (4, 0.1, 1, 1), (20, 0.05, 1, 1)],
)
def test_steps_run_at_a_strength_as_each_pipeline_counts_them(
    steps: int, strength: float, sdxl: int, anima: int
) -> None:
    assert sdxl_img2img_steps(steps, strength) == sdxl
    assert anima_img2img_steps(steps, strength) == anima
    schedule = sdxl_img2img_schedule(steps, strength)
    assert int(schedule * strength) >= 1  # diffusers would raise at 0
    assert schedule == steps or int((schedule - 1) * strength) == 0  # no longer than needed


def test_the_passes_of_each_kind_of_job() -> None:
    source = SourceImage("inputs/a.png", "0" * 64)
    assert plan_passes(PARAMS, False, sdxl_img2img_steps) == [Pass(832, 1216, None, 28)]
    assert plan_passes(replace(PARAMS, source=source, strength=0.5), True, sdxl_img2img_steps) == [
        Pass(832, 1216, 0.5, 14)
    ]
    hires = replace(PARAMS, hires=HiresFix(1.5, 0.35))
    assert plan_passes(hires, False, sdxl_img2img_steps) == [Pass(832, 1216, None, 28), Pass(1248, 1824, 0.35, 9)]
    with pytest.raises(ValueError, match="strength"):
        plan_passes(replace(PARAMS, hires=HiresFix(1.5, 0.0)), False, sdxl_img2img_steps)


def test_one_counter_over_passes_and_images() -> None:
    seen: list[tuple[int, int]] = []
    passes = [Pass(64, 64, None, 3), Pass(96, 96, 0.5, 2)]
    progress = PassProgress(lambda p: seen.append((p.step, p.total)), passes, images=2)
    for image in range(2):
        for index, step in enumerate(passes):
            progress.start(index, image)
            for number in range(1, step.steps + 1):
                progress.step(number)
    assert seen == [(step, 10) for step in range(1, 11)]
    corrected: list[StepProgress] = []
    order_two = PassProgress(corrected.append, [Pass(64, 64, None, 3)])
    order_two.start(0)
    order_two.step(1, 5)  # a scheduler of order 2 reports its real total
    assert (corrected[0].step, corrected[0].total) == (1, 5)


def test_resized_is_lanczos_rgb_at_the_size_and_leaves_a_fitting_image_alone() -> None:
    rgba = Image.new("RGBA", (30, 20), (10, 20, 30, 40))
    out = resized(rgba, 64, 48)
    assert out.mode == "RGB" and out.size == (64, 48)
    fitting = Image.new("RGB", (64, 48))
    assert resized(fitting, 64, 48) is fitting
