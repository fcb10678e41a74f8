"""Generation time of the built-in tiny models on this machine (run by hand; prints figures).

    python benchmarks/bench_generate.py [--runs 5] [--steps 28]

Reports, per model: first build (when the on-disk cache is empty), load from disk, and the time of
one image and of a batch of four at the model's default (scaled) size with the dialect's steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bot.config import load_config
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, resolve_request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="default: the dialect's (28 / 30)")
    args = parser.parse_args()

    import torch

    from inference.device import make_runtime
    from inference.quiet import silence_library_output
    from inference.registry import load_backend

    silence_library_output()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    config = load_config(None)
    with tempfile.TemporaryDirectory() as tmp:
        runtime = make_runtime("cpu", "auto", Path(tmp))
        for name in ("tiny-sdxl", "tiny-anima"):
            spec = config.models[name]
            started = time.perf_counter()
            load_backend(spec, runtime).unload()
            first = time.perf_counter() - started
            started = time.perf_counter()
            backend = load_backend(spec, runtime)
            load = time.perf_counter() - started
            print(f"\n{name}: first build + load {first:.2f}s, load from disk {load:.2f}s")
            for count in (1, 4):
                request = GenerationRequest(name, PromptChoices("1girl, smile, night"), seed=1, count=count,
                                            steps=args.steps)
                params = resolve_request(request, config.models).params
                backend.generate(params)  # warm-up
                times = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    backend.generate(params)
                    times.append(time.perf_counter() - started)
                median = statistics.median(times)
                print(
                    f"  {count} image(s) {params.width}x{params.height}, {params.steps} steps: "
                    f"median {median * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
                    f"{params.steps * count / median:.0f} image-steps/s"
                )
            backend.unload()


if __name__ == "__main__":
    main()
