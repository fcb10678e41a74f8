"""What an upscale costs: the added time of an upscale job (image to image from its parent's image at the parent's
size x scale) against a plain text-to-image job at the same final size, and of a hires-fix job (both passes in
one job), on the tiny built-in models (CPU). Run by hand; prints figures with the load average.

    python benchmarks/bench_upscale.py                                  # tiny-sdxl and tiny-anima, x1.5 and x2
    python benchmarks/bench_upscale.py --models tiny-sdxl --size 128 --scales 2 --steps 12 --repeats 5

Per model and scale, from one loaded model (the number of loads is printed: one per model):
    parent    text to image at size x size (what the user upscales)
    plain     text to image at the final size (scaled_size(size, size, scale)), `steps` steps
    upscale   image to image from the parent's image at the final size, at `strength` (steps x strength run)
    hires     the hires fix in one job: the parent's pass, then the upscale's pass
Each figure is the median of `repeats` runs after one warm-up run; the four jobs take turns (round after round),
so a change in the machine's load weighs on all of them alike. The tiny models' figures show the shape of the
costs (an upscale runs steps x strength steps plus a VAE encode, so it is cheaper than a plain job at the final
size when strength < 1); a real model on a GPU spends its time the same way, in the denoiser's steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from measure import ms  # noqa: E402  (benchmarks/measure.py)

from inference.specs import Family  # noqa: E402  (no torch)

MODELS: dict[str, tuple[Family, str]] = {"tiny-sdxl": ("sdxl", "euler_a"), "tiny-anima": ("anima", "flow_euler")}


@dataclass(frozen=True)
class Row:
    model: str
    scale: float
    final: tuple[int, int]
    parent: float
    plain: float
    upscale: float
    hires: float
    steps: dict[str, int]  # the steps each job ran (image to image: steps x strength)

    def lines(self) -> list[str]:
        added = self.upscale / self.plain if self.plain > 0 else float("nan")
        width, height = self.final
        return [
            f"{self.model} x{self.scale:g} -> {width}x{height}: parent {ms(self.parent)}, plain {ms(self.plain)}, "
            f"upscale {ms(self.upscale)} ({added:.2f}x plain), hires {ms(self.hires)} "
            f"(parent + upscale {ms(self.parent + self.upscale)})",
            "    steps run: " + ", ".join(f"{name} {count}" for name, count in self.steps.items()),
        ]


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "load average n/a"


def time_jobs(backend: Any, jobs: dict[str, tuple[Any, Any]], repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    """The median seconds of each job (params, source) and the steps one image of it runs (its progress total:
    image to image runs steps x strength). One warm-up run each, then the jobs take turns, `repeats` rounds, so
    that a change in the machine's load while it runs weighs on every job alike."""
    steps: dict[str, int] = {}
    for name, (params, source) in jobs.items():
        totals: list[int] = []
        backend.generate(params, lambda progress, seen=totals: seen.append(progress.total), source=source)
        steps[name] = totals[-1] // params.count
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (params, source) in jobs.items():
            started = time.perf_counter()
            backend.generate(params, source=source)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}, steps


def measure(model: str, size: int, scales: list[float], steps: int, strength: float | None, repeats: int) -> list[Row]:
    import torch

    from bot.prompts.dialects import load_dialect
    from inference.cache import ModelCache
    from inference.registry import load_backend
    from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
    from inference.types import GenerationParams, HiresFix, SourceImage, scaled_size

    family, sampler = MODELS[model]
    spec = ModelSpec(model, family, "anima" if family == "anima" else "animagine-xl-4", BuiltinSource(model))
    loads: list[str] = []
    if strength is None:  # what ⬆ and hires:true use on this model (data/models/*.toml [tools])
        strength = load_dialect("anima" if family == "anima" else "animagine-xl-4.0").tools.hires_strength
    print(f"{model}: strength {strength:g}")

    def counting(spec: ModelSpec, runtime: RuntimeOptions, progress: object) -> object:
        loads.append(spec.name)
        return load_backend(spec, runtime, None)

    with tempfile.TemporaryDirectory() as cache_dir:
        runtime = RuntimeOptions("cpu", None, Path(cache_dir), local_files_only=True)
        cache = ModelCache(runtime, loader=counting)  # type: ignore[arg-type]
        backend = cache.get(spec)
        base = GenerationParams("1girl, smile, looking at viewer", "lowres", size, size, steps, 5.0, (7,), sampler)
        parent_image = backend.generate(base)[0]
        origin = SourceImage("images/1/0.png", "0" * 64, job_id=1)
        rows = []
        for scale in scales:
            width, height = scaled_size(size, size, scale)
            plain = replace(base, width=width, height=height)
            upscale = replace(plain, source=origin, strength=strength)
            hires = replace(base, hires=HiresFix(scale, strength))
            jobs = {"parent": (base, None), "plain": (plain, None), "upscale": (upscale, parent_image)}
            jobs["hires"] = (hires, None)
            seconds, steps_run = time_jobs(backend, jobs, repeats)
            rows.append(Row(model, scale, (width, height), steps=steps_run, **seconds))
            cache.get(spec)  # a cache hit: no second load
        cache.clear()
    print(f"{model}: {len(loads)} load(s) for every job above; torch threads {torch.get_num_threads()}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-sdxl,tiny-anima", help="comma-separated: tiny-sdxl, tiny-anima")
    parser.add_argument("--size", type=int, default=128, help="the parent's edge in pixels (a multiple of 16)")
    parser.add_argument("--scales", default="1.5,2", help="comma-separated upscale factors")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--strength", type=float, default=None, help="the upscale's denoising strength (default: the model's own)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the tiny models' fastest)")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)} (known: {', '.join(MODELS)})")
    scales = [float(value) for value in args.scales.split(",")]

    import torch

    torch.set_num_threads(args.threads)
    print(f"bench_upscale: parent {args.size}x{args.size}, {args.steps} steps, "
          f"median of {args.repeats}; {load_average()}")
    for model in models:
        for row in measure(model, args.size, scales, args.steps, args.strength, args.repeats):
            for line in row.lines():
                print(line)
    print(f"done; {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
