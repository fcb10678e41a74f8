"""What LoRAs cost a job, on the tiny models (run by hand; prints figures with the load average).

    python benchmarks/bench_lora.py                    # tiny SDXL and tiny Anima, 64x64, 4 steps, 5 samples
    python benchmarks/bench_lora.py --models sdxl --samples 9 --steps 8 --library 50 --hash-mb 256

Per model, through the real backend (load_sdxl / load_anima on the CPU) with LoraAdapters around its generate, as
the backends apply them:
    plain          a job with no LoRA layer in the model (before any LoRA, or after LoraAdapters.clear())
    first LoRA     the job that loads the LoRA (read, converted, injected)
    cached LoRA    the same LoRA in the next jobs (no reload: `loads` stays 1)
    plain after    a job without LoRA while the adapter stays loaded and disabled (peft's wrappers run only their
                   base layer: the bit-identical path, its cost)
and the library: a cold scan of `--library` LoRA files (hashing them) versus a warm one (the hash cache), and the
hashing speed on one `--hash-mb` MB file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from measure import ms  # noqa: E402


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def bench_model(family: str, root: Path, samples: int, steps: int) -> dict[str, float]:
    from inference.backends.anima import load_anima
    from inference.backends.sdxl import load_sdxl
    from inference.lora_adapters import LoraAdapters
    from inference.loras import file_hashes
    from inference.specs import BuiltinSource, ModelSpec, RuntimeOptions
    from inference.tiny.lora import tiny_anima_lora, tiny_sdxl_lora, write_lora
    from inference.types import GenerationParams, LoraFile

    runtime = RuntimeOptions(device="cpu", dtype=None, cache_dir=root / "models", local_files_only=True)
    backend: Any
    if family == "sdxl":
        spec = ModelSpec("tiny-sdxl", "sdxl", "animagine-xl-4", BuiltinSource("tiny-sdxl"), memory="high")
        backend = load_sdxl(spec, runtime)
        path = write_lora(root / "sdxl.safetensors", tiny_sdxl_lora("kohya"))
        params = GenerationParams("1girl, smile", "lowres", 64, 64, steps, 5.0, (1,), "euler_a")
    else:
        spec = ModelSpec("tiny-anima", "anima", "anima", BuiltinSource("tiny-anima"), size_scale=0.125, memory="high")
        backend = load_anima(spec, runtime)
        path = write_lora(root / "anima.safetensors", tiny_anima_lora("comfyui"))
        params = GenerationParams("1girl, smile", "lowres", 64, 64, steps, 4.0, (1,), "flow_euler")
    lora = LoraFile(path.stem, path, file_hashes(path)[0], 0.8)
    pipe = backend.pipeline

    def timed(work: Any) -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    backend.generate(params)  # warm-up (first-call set-up is no job's cost)
    adapters = LoraAdapters(pipe)

    def job() -> None:
        with adapters.applied([lora]):
            backend.generate(params)

    # Rounds of the four, so a drift in the machine's load touches each alike: cleared (the model as it was
    # before any LoRA), then the job that loads it, the same LoRA again, a plain job with it loaded and disabled.
    rounds: dict[str, list[float]] = {"plain": [], "first": [], "cached": [], "after": []}
    for _ in range(samples):
        adapters.clear()
        rounds["plain"].append(timed(lambda: backend.generate(params)))
        rounds["first"].append(timed(job))
        rounds["cached"].append(timed(job))
        rounds["after"].append(timed(lambda: backend.generate(params)))
    assert adapters.loads == samples  # one load per round: the cached job never reloads
    adapters.clear()
    plain, first, cached, after = (statistics.median(rounds[k]) for k in ("plain", "first", "cached", "after"))
    return {"plain": plain, "first": first, "cached": cached, "after": after}


def bench_library(root: Path, files: int, hash_mb: int) -> dict[str, float]:
    from inference.loras import HashCache, LoraLibrary, file_hashes
    from inference.tiny.lora import tiny_sdxl_lora, write_lora

    folder = root / "library"
    state = tiny_sdxl_lora("kohya")
    for i in range(files):
        write_lora(folder / f"lora_{i:03d}.safetensors", state, metadata={"index": str(i)})
    cache = root / "hashes.json"
    start = time.perf_counter()
    cold = LoraLibrary.scan(folder, HashCache(cache))
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm_cache = HashCache(cache)
    warm = LoraLibrary.scan(folder, warm_cache)
    warm_s = time.perf_counter() - start
    assert len(cold.entries) == len(warm.entries) == files and warm_cache.hashed == 0
    result = {"files": float(files), "cold": cold_s, "warm": warm_s}
    if hash_mb > 0:
        big = root / "big.safetensors"
        header = b'{"__metadata__":{}}'
        with open(big, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header)
            chunk = os.urandom(1024 * 1024)
            for _ in range(hash_mb):
                f.write(chunk)
        start = time.perf_counter()
        file_hashes(big)
        result["mb_per_s"] = hash_mb / (time.perf_counter() - start)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sdxl,anima", help="sdxl, anima or both (comma-separated)")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--library", type=int, default=20, help="LoRA files in the scanned folder")
    parser.add_argument("--hash-mb", type=int, default=64, help="size of the file whose hashing speed is measured")
    args = parser.parse_args(argv)

    from inference.quiet import silence_library_output

    silence_library_output()
    print(f"bench_lora: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        root = Path(tmp)
        for family in [m.strip() for m in args.models.split(",") if m.strip()]:
            r = bench_model(family, root, args.samples, args.steps)
            print(
                f"{family}: 64x64, {args.steps} steps, median of {args.samples}: plain {ms(r['plain'])}, "
                f"first LoRA {ms(r['first'])} (load +{ms(r['first'] - r['plain'])}), cached LoRA {ms(r['cached'])} "
                f"(+{ms(r['cached'] - r['plain'])}), plain after {ms(r['after'])} (+{ms(r['after'] - r['plain'])})"
            )
        lib = bench_library(root, args.library, args.hash_mb)
        line = f"library: {int(lib['files'])} files, cold scan {ms(lib['cold'])}, warm scan {ms(lib['warm'])}"
        if "mb_per_s" in lib:
            line += f"; hashing {lib['mb_per_s']:.0f} MB/s (SHA-256 + AutoV3 in one read)"
        print(line)
    print(f"bench_lora: {load_average()}")


if __name__ == "__main__":
    main()
