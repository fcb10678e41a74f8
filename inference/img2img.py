"""The passes of one generation (text to image, image to image, the hires fix) and their step counts, shared by
both backends. No torch: PIL only.

A job is one or two passes over the same seeds:
    1. text to image at width x height, or image to image from the source resized (Lanczos) to width x height;
    2. with a hires fix: the first pass's images upscaled (Lanczos) to params.output_size() and refined by image to
       image at hires.strength.
An image-to-image pass at `strength` runs only the last part of the schedule (steps x strength steps, rounded the
way each pipeline rounds it); PassProgress turns the passes' own step counters into one counter for the job whose
total counts every pass from the first step on (so the bar does not jump back when the refine pass starts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from inference.types import GenerationParams, ProgressCallback, StepProgress

# How many steps an image-to-image pass of `steps` at `strength` runs, as each pipeline counts them.
StepCounter = Callable[[int, float], int]


def sdxl_img2img_steps(steps: int, strength: float) -> int:
    """StableDiffusionXLImg2ImgPipeline.get_timesteps: int(steps x strength) of the last steps (at least one:
    see sdxl_img2img_schedule)."""
    return max(1, min(int(steps * strength), steps))


def sdxl_img2img_schedule(steps: int, strength: float) -> int:
    """The num_inference_steps to hand diffusers' SDXL img2img so that at least one step runs: it raises when
    int(steps x strength) is 0 (a strength below 1/steps). Then the schedule is made just long enough that its
    last step is within that strength (one step from a noise level at most `strength`)."""
    schedule = max(1, steps)
    while int(schedule * strength) < 1:
        schedule += 1
    return schedule


def anima_img2img_steps(steps: int, strength: float) -> int:
    """diffusers' Anima get_timesteps: steps - int(steps - steps x strength) (never fewer than one for strength > 0)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))


@dataclass(frozen=True)
class Pass:
    """One pipeline pass: its size, its strength (None: text to image) and the steps it runs."""

    width: int
    height: int
    strength: float | None
    steps: int

    @property
    def img2img(self) -> bool:
        return self.strength is not None


def plan_passes(params: GenerationParams, has_source: bool, img2img_steps: StepCounter) -> list[Pass]:
    """The passes of a job: the first at width x height (image to image when there is a source), then the hires
    refine at output_size()."""
    if has_source:
        strength = checked_strength(params.strength)
        first = Pass(params.width, params.height, strength, img2img_steps(params.steps, strength))
    else:
        first = Pass(params.width, params.height, None, params.steps)
    if params.hires is None:
        return [first]
    width, height = params.output_size()
    strength = checked_strength(params.hires.strength)
    return [first, Pass(width, height, strength, img2img_steps(params.steps, strength))]


def resized(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` in RGB at width x height (Lanczos), the image itself when it already is."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size == (width, height):
        return rgb
    return rgb.resize((width, height), Image.Resampling.LANCZOS)


def resized_all(images: Sequence[Image.Image], width: int, height: int) -> list[Image.Image]:
    return [resized(image, width, height) for image in images]


class PassProgress:
    """One step counter over a job's passes (and, for a backend that makes one image per call, its images).
    Each pass reports its own steps from 1; the job's counter adds the steps of the passes (and images) before
    it, and its total counts every planned pass of every image from the first step on. A pass whose real total
    differs from the plan (a scheduler of order 2) corrects the total when it reports."""

    def __init__(self, report: ProgressCallback | None, passes: Sequence[Pass], images: int = 1) -> None:
        self.report = report
        self.planned = [p.steps for p in passes]
        self.images = images
        self.image = 0
        self.index = 0  # the running pass
        self.started: float | None = None

    def start(self, index: int, image: int = 0) -> None:
        """Pass `index` of image `image` begins."""
        self.index, self.image = index, image

    def step(self, step: int, total: int | None = None) -> None:
        """Step `step` (from 1) of the running pass, whose real total is `total` (default: as planned)."""
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        per_image = sum(self.planned)
        before = self.image * per_image + sum(self.planned[: self.index])
        job_total = self.images * per_image
        if total is not None:
            job_total += total - self.planned[self.index]
        if self.report is not None:
            self.report(StepProgress(before + step, job_total, now - self.started))


def checked_strength(strength: float) -> float:
    """A strength the request accepts is in (0, 1]; anything else is a bug upstream (NaN fails too)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"img2img strength must be in (0, 1], got {strength}")
    return strength
