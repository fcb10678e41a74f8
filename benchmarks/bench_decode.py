"""VAE decode peak memory of the real SDXL and Anima VAEs, measured on the CPU (run by hand; prints figures).

    python benchmarks/bench_decode.py                      # 1024x1024, counts 1 and 4, every VAE
    python benchmarks/bench_decode.py --sizes 1024x1024,1536x1536 --vaes sdxl-fp32,anima-bf16
    python benchmarks/bench_decode.py --cards              # auto's choice by card size (computed; no torch)

The VAEs are the real architectures at their real size with random weights, built in code from the
published configs (no download): SDXL's AutoencoderKL (stabilityai/stable-diffusion-xl-base-1.0/vae:
block_out_channels [128, 256, 512, 512], layers_per_block 2, latent_channels 4, sample_size 1024,
scaling_factor 0.13025, force_upcast) and Anima's Qwen-Image VAE (diffusers' AutoencoderKLQwenImage with its
defaults: base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2). A decode's memory does not depend
on the weights' values.

Each case (VAE, dtype, size, count, slicing, tile edge) runs in a fresh subprocess so peaks do not mix: it
builds the VAE, decodes a small latent once (so one-time kernel set-up is not counted), resets the process's
RSS high-water mark (/proc/self/clear_refs), decodes `count` random latents and reports the rise of VmHWM over
the RSS just before the decode. glibc is told to hand every allocation of 1 MiB or more back to the system
when freed (MALLOC_MMAP_THRESHOLD_), so RSS follows the live tensors as a GPU allocator's peak would.
tracemalloc runs too: it sees only Python's own allocations (torch's tensors are not among them), so it shows
how little of the peak is Python objects.

The VAEs:
    sdxl-fp32   what diffusers decodes an fp16 SDXL VAE in (it upcasts it: force_upcast)
    sdxl-bf16   2-byte activations: stands in for the fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix), which
                decodes in fp16 with no upcast (the CPU has no fast fp16 convolutions; bf16 is the same size)
    anima-fp32  the Qwen-Image VAE in fp32 (Anima on a GPU without bf16, or on the CPU)
    anima-bf16  the Qwen-Image VAE in bf16, as Anima runs on a CUDA GPU with bf16

Slicing (decode one image of the batch at a time) changes nothing for one image: diffusers only slices a
batch of more than one. Tiling changes nothing for an image no larger than one tile (SDXL's tile is its
sample_size, 1024 px; minimal mode uses 512 px tiles; the Qwen-Image VAE's tile is 256 px).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from inference.memory import (  # noqa: E402  (pure Python: no torch)
    GIB,
    MEGAPIXEL,
    REFERENCE_FOOTPRINTS,
    estimate_peak,
    plan_job,
    resolve_mode,
)
from inference.specs import Family  # noqa: E402

MIB = 1024**2

# The published configs (diffusers' AutoencoderKL / AutoencoderKLQwenImage keyword arguments).
SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
QWEN_IMAGE_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}

VAES: dict[str, tuple[Family, str]] = {
    "sdxl-fp32": ("sdxl", "float32"),
    "sdxl-bf16": ("sdxl", "bfloat16"),
    "anima-fp32": ("anima", "float32"),
    "anima-bf16": ("anima", "bfloat16"),
}
# The tile edges the memory modes use (inference.memory: tile_px in balanced/low, minimal_tile_px in minimal).
TILES: dict[Family, tuple[int, ...]] = {
    family: tuple(sorted({fp.tile_px, fp.minimal_tile_px}, reverse=True)) for family, fp in REFERENCE_FOOTPRINTS.items()
}
# The dtype each family's weights are held in on a CUDA GPU (inference.device.resolve_dtype).
GPU_WEIGHT_BYTES: dict[Family, int] = {"sdxl": 2, "anima": 2}


@dataclass(frozen=True)
class Case:
    vae: str  # a key of VAES
    width: int
    height: int
    count: int
    slicing: bool
    tile: int | None  # the tile edge in pixels; None = no tiling

    @property
    def family(self) -> Family:
        return VAES[self.vae][0]

    @property
    def dtype(self) -> str:
        return VAES[self.vae][1]

    def label(self) -> str:
        tiling = f"tiles {self.tile}" if self.tile else "no tiling"
        slicing = "slicing" if self.slicing else "no slicing"
        return f"{self.vae} {self.width}x{self.height} x{self.count}, {slicing}, {tiling}"


@dataclass(frozen=True)
class Result:
    case: Case
    weights: int  # bytes of the whole VAE (encoder + decoder) at the case's dtype
    parameters: int
    baseline: int  # RSS just before the decode
    peak: int  # rise of the RSS high-water mark during the decode
    python_peak: int  # tracemalloc's peak (Python objects only)
    seconds: float
    finite: bool  # whether the output is free of NaN/inf (random weights may overflow; memory is the same)


# -- the memory probe (also used by bench_gpu.py on the CPU) -----------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (VmHWM) to the current RSS. False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """The RSS high-water mark in bytes since the process started or the last reset_peak_rss()."""
    return _status_kib("VmHWM") * 1024


def can_measure_rss() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/status").exists()


# -- one case, in its own process ---------------------------------------------------------------------------


def build_vae(family: Family, dtype: Any) -> Any:
    import torch

    torch.manual_seed(0)
    if family == "sdxl":
        from diffusers import AutoencoderKL

        vae: Any = AutoencoderKL(**SDXL_VAE_CONFIG)
    else:
        from diffusers import AutoencoderKLQwenImage

        vae = AutoencoderKLQwenImage(**QWEN_IMAGE_VAE_CONFIG)
    return vae.to(dtype=dtype).eval()


def set_tiling(vae: Any, family: Family, tile: int | None) -> None:
    """Tiling with `tile`-pixel tiles (None: off), overlapping as the VAE does by default."""
    if tile is None:
        vae.disable_tiling()
        return
    if family == "sdxl":
        vae.enable_tiling()
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // 8
    else:  # the Qwen-Image VAE: 256 px tiles every 192 px by default
        stride = tile * 3 // 4
        vae.enable_tiling(
            tile_sample_min_height=tile,
            tile_sample_min_width=tile,
            tile_sample_stride_height=stride,
            tile_sample_stride_width=stride,
        )


def latents(family: Family, count: int, width: int, height: int, dtype: Any) -> Any:
    import torch

    generator = torch.Generator().manual_seed(1)
    if family == "sdxl":
        shape: tuple[int, ...] = (count, 4, height // 8, width // 8)
    else:
        shape = (count, 16, 1, height // 8, width // 8)  # one frame
    return torch.randn(shape, generator=generator).to(dtype)


def run_case(case: Case) -> Result:
    """Measure one case in this process (call it in a fresh one)."""
    import tracemalloc

    import torch

    from inference.device import module_bytes

    dtype = getattr(torch, case.dtype)
    vae = build_vae(case.family, dtype)
    if case.slicing:
        vae.enable_slicing()
    else:
        vae.disable_slicing()
    set_tiling(vae, case.family, case.tile)
    weights = module_bytes(vae)
    parameters = sum(p.numel() for p in vae.parameters())
    z = latents(case.family, case.count, case.width, case.height, dtype)
    with torch.inference_mode():
        vae.decode(latents(case.family, 1, 64, 64, dtype))  # kernel set-up, not counted
        gc.collect()
        reset_peak_rss()
        baseline = rss()
        tracemalloc.start()
        started = time.perf_counter()
        out = vae.decode(z).sample
        seconds = time.perf_counter() - started
        _current, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = peak_rss() - baseline
        finite = bool(torch.isfinite(out).all())
    return Result(case, weights, parameters, baseline, peak, python_peak, seconds, finite)


def run_in_subprocess(case: Case, threads: int | None) -> Result:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(MIB)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(asdict(case))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case.label()}: exit {done.returncode}\n{done.stderr[-2000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    data["case"] = Case(**data["case"])
    return Result(**data)


# -- which cases --------------------------------------------------------------------------------------------


COMBOS = ("plain", "slicing", "tiling", "slicing+tiling")


def combo(case: Case) -> str:
    if case.slicing:
        return "slicing+tiling" if case.tile else "slicing"
    return "tiling" if case.tile else "plain"


def cases_for(vae: str, width: int, height: int, counts: list[int], combos: tuple[str, ...] = COMBOS) -> list[Case]:
    """Every combination of slicing and tiling in `combos` that does something: no slicing for one image
    (diffusers slices only batches), no tile edge the image fits in."""
    family = VAES[vae][0]
    tiles: list[int | None] = [None, *(t for t in TILES[family] if width > t or height > t)]
    cases: list[Case] = []
    for count in counts:
        for slicing in (False, True) if count > 1 else (False,):
            cases.extend(Case(vae, width, height, count, slicing, tile) for tile in tiles)
    return [case for case in cases if combo(case) in combos]


def expected_peak(case: Case) -> int:
    """A rough guess of the case's peak from inference.memory's decode_per_mp (for the fp32 SDXL decode and
    the bf16 Anima one), so that a case the machine cannot hold is skipped instead of swapping."""
    per_mp = REFERENCE_FOOTPRINTS[case.family].decode_per_mp
    if case.family == "anima" and case.dtype == "float32":
        per_mp *= 2
    edge_w, edge_h = case.width, case.height
    if case.tile is not None:
        edge_w, edge_h = min(edge_w, case.tile), min(edge_h, case.tile)
    at_once = 1 if case.slicing else case.count  # a tiled decode runs each tile over the whole batch
    return int(per_mp * edge_w * edge_h / MEGAPIXEL * at_once)


def available_memory() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# -- output -------------------------------------------------------------------------------------------------


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def print_results(results: list[Result], skipped: list[tuple[Case, str]]) -> None:
    print("\n| VAE | size | count | slicing | tiling | decode peak (GiB) | per image-MP (GiB) | time (s) | Python |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r.case
        mp = c.width * c.height / MEGAPIXEL * (1 if c.slicing else c.count)
        tile = f"{c.tile} px" if c.tile else "off"
        print(
            f"| {c.vae} | {c.width}x{c.height} | {c.count} | {'on' if c.slicing else 'off'} | {tile} | "
            f"**{gib(r.peak)}** | {gib(r.peak / mp)} | {r.seconds:.1f} | {r.python_peak / MIB:.1f} MiB |"
        )
    for case, why in skipped:
        print(
            f"| {case.vae} | {case.width}x{case.height} | {case.count} | {'on' if case.slicing else 'off'} | "
            f"{f'{case.tile} px' if case.tile else 'off'} | skipped: {why} | | | |"
        )
    print("\nper image-MP: the peak divided by the megapixels decoded at once (the batch without slicing).")
    if any(not r.finite for r in results):
        print("Some outputs hold NaN/inf: random weights overflow; the memory a decode takes is the same.")


def print_weights(results: list[Result]) -> None:
    print("\n| VAE | parameters | weights at this dtype (module_bytes) | on a GPU (2 bytes) | REFERENCE_FOOTPRINTS |")
    print("|---|---|---|---|---|")
    seen = set()
    for r in results:
        if r.case.vae in seen:
            continue
        seen.add(r.case.vae)
        ref = REFERENCE_FOOTPRINTS[r.case.family].vae
        print(
            f"| {r.case.vae} | {r.parameters / 1e6:.1f} M | {gib(r.weights)} GiB | "
            f"{gib(r.parameters * GPU_WEIGHT_BYTES[r.case.family])} GiB | {gib(ref)} GiB |"
        )


def print_coefficients(results: list[Result]) -> None:
    """The measured decode working set per megapixel next to inference.memory's decode_per_mp."""
    print("\n| family | decode_per_mp in inference/memory.py | measured, one 1024x1024-class image, no tiling |")
    print("|---|---|---|")
    for family, fp in REFERENCE_FOOTPRINTS.items():
        figures = []
        for r in results:
            c = r.case
            if c.family == family and c.tile is None and (c.count == 1 or c.slicing):
                mp = c.width * c.height / MEGAPIXEL
                figures.append(f"{c.vae} {c.width}x{c.height} x{c.count}: {gib(r.peak / mp)} GiB/MP")
        print(f"| {family} | {gib(fp.decode_per_mp)} GiB/MP | {'; '.join(figures) or '—'} |")


# -- auto's choice by card size (computed) ------------------------------------------------------------------

CARDS_GIB = (4, 6, 8, 10, 12, 16, 24)
CUDA_CONTEXT_GIB = 0.5  # what the CUDA context and the cuBLAS/cuDNN workspaces hold before the model loads


def card_rows(width: int = 1024, height: int = 1024, counts: tuple[int, ...] = (1, 4)) -> list[str]:
    """Markdown rows: card size → the mode `auto` picks → the estimated peak of a width x height job of each
    count in that mode (images per call where the batch is split), per family. Computed with
    inference.memory (resolve_mode, plan_job) from REFERENCE_FOOTPRINTS."""
    rows = []
    for card in CARDS_GIB:
        budget = int((card - CUDA_CONTEXT_GIB) * GIB)
        cells = [f"{card} GB"]
        for family in ("sdxl", "anima"):
            fp = REFERENCE_FOOTPRINTS[family]
            mode = resolve_mode("auto", budget, fp)
            cells.append(mode)
            for count in counts:
                plan = plan_job(budget, fp, width, height, count, mode)
                if plan is None:
                    cells.append("does not fit")
                    continue
                how = "" if plan.mode == mode else f" ({plan.mode})"
                if plan.batch < count and fp.batches:
                    how += f" {plan.batch} per call"
                cells.append(f"{plan.peak / GIB:.1f} GiB{how}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def print_cards() -> None:
    print(f"Budget = card - {CUDA_CONTEXT_GIB} GiB (CUDA context); 1024x1024; inference/memory.py's figures.\n")
    print("| card | SDXL: auto | SDXL x1 | SDXL x4 | Anima: auto | Anima x1 | Anima x4 |")
    print("|---|---|---|---|---|---|---|")
    for row in card_rows():
        print(row)
    print("\nSDXL x4 runs as one batch; Anima runs one image per call (its pipeline does not batch).")
    print("A mode in brackets: the job steps down from auto's mode to fit. 'n per call': the batch is split.")
    print("\nEstimated peak per mode, 1024x1024 (GiB):\n")
    print("| family | count | high | balanced | low | minimal |")
    print("|---|---|---|---|---|---|")
    for family, fp in REFERENCE_FOOTPRINTS.items():
        for count in (1, 4):
            peaks = [estimate_peak(fp, 1024, 1024, count, m) / GIB for m in ("high", "balanced", "low", "minimal")]
            print(f"| {family} | {count} | " + " | ".join(f"{p:.1f}" for p in peaks) + " |")


# -- main ---------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024x1024", help="comma-separated WxH (default 1024x1024)")
    parser.add_argument("--counts", default="1,4", help="images per decode (default 1,4)")
    parser.add_argument("--vaes", default=",".join(VAES), help=f"comma-separated, of {', '.join(VAES)}")
    parser.add_argument(
        "--combos", default=",".join(COMBOS), help=f"which of {', '.join(COMBOS)} to run (default: all)"
    )
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the case processes")
    parser.add_argument("--cards", action="store_true", help="print auto's choice by card size and stop")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case as JSON, in a fresh process
    args = parser.parse_args()

    if args.case:
        import torch

        torch.set_flush_denormal(True)  # random weights: keep denormals from slowing the decode
        result = run_case(Case(**json.loads(args.case)))
        print(json.dumps(asdict(result)))
        return
    if args.cards:
        print_cards()
        return
    if not can_measure_rss():
        sys.exit("bench_decode measures RSS through /proc/self: run it on Linux")

    import torch

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads or torch.get_num_threads()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {available_memory() / GIB:.1f} GiB available"
    )
    results: list[Result] = []
    skipped: list[tuple[Case, str]] = []
    for vae in args.vaes.split(","):
        for width, height in sizes:
            for case in cases_for(vae, width, height, counts, tuple(args.combos.split(","))):
                need = expected_peak(case)
                free = available_memory()
                if need > 0.8 * free:
                    skipped.append((case, f"needs ~{gib(need)} GiB, {gib(free)} available"))
                    print(f"skip {case.label()}: needs ~{gib(need)} GiB", flush=True)
                    continue
                result = run_in_subprocess(case, args.threads)
                results.append(result)
                print(f"{case.label()}: peak {gib(result.peak)} GiB, {result.seconds:.1f} s", flush=True)
    print_results(results, skipped)
    print_weights(results)
    print_coefficients(results)


if __name__ == "__main__":
    main()
