"""Speed and memory of the configured models on a GPU, per model x size x count x memory mode (run by hand;
prints a markdown table for docs/benchmarks.md).

    python benchmarks/bench_gpu.py --config config.toml --models animagine-xl-4,anima
    python benchmarks/bench_gpu.py --config config.toml --models anima --sizes 1024x1024,832x1216 \\
        --counts 1,4 --modes high,balanced,low,minimal --runs 2

For every model and memory mode it starts a GenerationService on a temporary data directory (the bot's
real queue, store and GPU worker, quotas off), with the model's spec set to that mode
(`dataclasses.replace(spec, memory=mode)`), loads the model through the worker (load time), warms it up
once (on a GPU also once per size and count: a new shape may autotune or recompile), then for each size
and count:

    bare         backend.generate(params) on the worker's GPU thread: s/image, it/s (the median
                 time between two denoising steps), peak memory (torch.cuda.max_memory_allocated, reset
                 before the call; on the CPU the rise of the process's RSS high-water mark)
    through the  service.submit(request) → the job is done and its PNGs written and recorded
    queue        (service.wait): the bot's overhead is this time ÷ the bare call's
    estimate     inference.memory.estimate_peak for the mode in effect, from the loaded weights

The first mode's load reads the weights from disk, the later ones mostly from the OS's file cache.
The sizes are given for full-size models and scaled like the bot scales them (the tiny built-ins make
1/8-size images). Without a CUDA GPU it runs the same code on the built-in tiny models at small settings,
so the script never rots, and says so: the figures are then for the plumbing only.

An out-of-memory error in the bare call is reported as OOM in its row and the run goes on; a job the
bot refuses (its pre-flight estimate) is reported as refused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_decode import can_measure_rss, peak_rss, reset_peak_rss, rss  # noqa: E402  (benchmarks/)

from bot.config import Config, parse_config  # noqa: E402
from bot.core.errors import UserError  # noqa: E402
from bot.prompts.builder import PromptChoices  # noqa: E402
from bot.prompts.requests import GenerationRequest, resolve_request, scaled  # noqa: E402
from inference.memory import GIB, MEMORY_MODES, estimate_peak  # noqa: E402
from inference.specs import MemoryMode, ModelSpec  # noqa: E402

T = TypeVar("T")
OWNER = "bench:gpu"
PROMPT = "1girl, solo, smile, long hair, blue eyes, night, sky, outdoors, looking at viewer"
TINY_MODELS = ("tiny-sdxl", "tiny-anima")


@dataclasses.dataclass(frozen=True)
class Row:
    """One model x mode x size x count."""

    model: str
    mode: str  # the mode asked for
    in_effect: str  # backend.memory_mode after loading (until the modes land every backend says "high")
    width: int
    height: int
    count: int
    steps: int
    load: float  # seconds to load the model in this mode
    bare: float | None  # seconds of the bare pipeline call (median of the runs); None: it failed
    job: float | None  # seconds of the same job through the queue (median); None: failed or refused
    it_per_s: float | None
    peak: int | None  # bytes: max_memory_allocated on CUDA, the RSS rise on the CPU
    estimate: int  # bytes: inference.memory.estimate_peak in the mode in effect
    note: str = ""

    @property
    def per_image(self) -> float | None:
        return None if self.bare is None else self.bare / self.count

    @property
    def overhead(self) -> float | None:
        return None if self.bare is None or self.job is None else self.job / self.bare


# -- measuring ----------------------------------------------------------------------------------------------


def make_worker_class() -> type[Any]:
    """A GpuWorker that can run a callable on its GPU thread (the bare calls run where jobs run)."""
    from inference.worker import GpuWorker

    class BenchWorker(GpuWorker):
        async def on_gpu_thread(self, work: Callable[[], T]) -> T:
            return await self._on_gpu(work)

    return BenchWorker


class Memory:
    """Peak memory of one call: CUDA's allocator statistics, or the process's RSS on the CPU (Linux)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        self._baseline = 0

    def reset(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif can_measure_rss():
            gc.collect()
            reset_peak_rss()
            self._baseline = rss()

    def peak(self) -> int | None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if can_measure_rss():
            return peak_rss() - self._baseline
        return None


def steps_per_second(times: list[float]) -> float | None:
    """1 / the median time between two consecutive step reports (a gap between two images of a job that
    runs one image per call is one outlier among many steps: the median ignores it)."""
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return 1 / statistics.median(gaps) if gaps else None


def free_memory(device: str) -> None:
    from inference.device import free_device_memory

    free_device_memory(device)


def is_out_of_memory(error: BaseException) -> bool:
    from inference.worker import is_out_of_memory as check

    return check(error)


def bench_config(path: Path | None, data_dir: Path, cpu: bool) -> Config:
    """The config of `path` (None: the embedded defaults) with its data_dir replaced by `data_dir` (the
    bot's own database and images stay untouched) and quotas off; on the CPU if `cpu`, else on the
    config's device."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        base = path.resolve().parent
    raw["data_dir"] = str(data_dir)
    raw["quotas"] = {**raw.get("quotas", {}), "images_per_day": 0, "max_queued_jobs": 0}
    if cpu:
        raw["inference"] = {**raw.get("inference", {}), "device": "cpu"}
    return parse_config(raw, base, path)


def request_for(
    spec: ModelSpec, width: int, height: int, count: int, steps: int | None, seed: int
) -> GenerationRequest:
    size = f"{scaled(width, spec.size_scale)}x{scaled(height, spec.size_scale)}"
    return GenerationRequest(spec.name, PromptChoices(PROMPT), seed=seed, steps=steps, count=count, size=size)


async def bench_model_mode(
    args: argparse.Namespace, config: Config, name: str, mode: MemoryMode, device: str
) -> list[Row]:
    """Every size x count of one model in one memory mode, in a GenerationService of its own."""
    from bot.core.service import GenerationService

    spec = dataclasses.replace(config.models[name], memory=mode)
    config.models[name] = spec
    service = GenerationService(config, worker_class=make_worker_class())
    rows: list[Row] = []
    memory = Memory(device)
    worker: Any = None
    try:
        await service.start()
        worker = service.worker
        started = time.perf_counter()
        backend = await worker.load_model(spec)
        load = time.perf_counter() - started
        in_effect: MemoryMode = backend.memory_mode
        width, height = args.sizes[0]
        first = request_for(spec, width, height, 1, args.steps, seed=1)
        warm = resolve_request(first, config.models, service.tags, config.discord.banned_words).params
        await worker.on_gpu_thread(lambda: backend.generate(warm))  # kernels, autotuning, compile warm-up

        for width, height in args.sizes:
            for count in args.counts:
                request = request_for(spec, width, height, count, args.steps, seed=1000 + count)
                try:
                    params = resolve_request(request, config.models, service.tags, config.discord.banned_words).params
                except UserError as e:
                    print(f"  {name} {width}x{height} x{count}: not a valid request here ({e.key})", flush=True)
                    continue
                estimate = estimate_peak(backend.footprint(), params.width, params.height, count, in_effect)
                row = await bench_case(args, service, backend, memory, request, params, device)
                rows.append(
                    dataclasses.replace(
                        row,
                        model=name,
                        mode=mode,
                        in_effect=in_effect,
                        load=load,
                        estimate=estimate,
                    )
                )
                print(f"  {format_row(rows[-1])}", flush=True)
    finally:
        await service.close()
        if worker is not None:
            worker.cache.clear()  # unload the model: the next mode loads it afresh
        free_memory(device)
    return rows


def timed_call(backend: Any, params: Any, memory: Memory) -> tuple[float, list[float]]:
    """One bare pipeline call: its seconds and the time of each step report."""
    step_times: list[float] = []
    memory.reset()
    started = time.perf_counter()
    backend.generate(params, progress=lambda _progress: step_times.append(time.perf_counter()))
    if memory.cuda:
        import torch

        torch.cuda.synchronize(memory.device)
    return time.perf_counter() - started, step_times


async def bench_case(
    args: argparse.Namespace,
    service: Any,
    backend: Any,
    memory: Memory,
    request: GenerationRequest,
    params: Any,
    device: str,
) -> Row:
    """The bare call and the job through the queue, `args.runs` times each; medians."""
    worker = service.worker
    bare: list[float] = []
    jobs: list[float] = []
    rates: list[float] = []
    peaks: list[int] = []
    note = ""
    # On a GPU one untimed call first: a new shape may autotune kernels or recompile a compiled model.
    warmups = 1 if memory.cuda else 0
    for run in range(warmups + args.runs):
        try:
            seconds, step_times = await worker.on_gpu_thread(lambda: timed_call(backend, params, memory))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            free_memory(device)
            note = "OOM (bare call)"
            break
        if run < warmups:
            continue
        bare.append(seconds)
        peak = memory.peak()
        if peak is not None:
            peaks.append(peak)
        rate = steps_per_second(step_times)
        if rate is not None:
            rates.append(rate)

        started = time.perf_counter()
        try:
            job = await service.submit(request, OWNER)
        except UserError as e:
            note = f"refused by the bot ({e.key})"
            break
        record = await service.wait(job.id)
        if str(record.state) != "done":
            note = f"job {record.state}: {record.error}"
            break
        jobs.append(time.perf_counter() - started)
    return Row(
        model="",
        mode="",
        in_effect="",
        width=params.width,
        height=params.height,
        count=params.count,
        steps=params.steps,
        load=0.0,
        bare=statistics.median(bare) if bare else None,
        job=statistics.median(jobs) if jobs else None,
        it_per_s=statistics.median(rates) if rates else None,
        peak=max(peaks) if peaks else None,
        estimate=0,
        note=note,
    )


# -- output -------------------------------------------------------------------------------------------------

HEADER = (
    "| model | mode (in effect) | size | count | steps | s/image | it/s | peak memory | estimate | load | "
    "queue ÷ bare | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def size(value: int | None) -> str:
    """Bytes as GiB, or MiB below one GiB (the tiny models)."""
    if value is None:
        return "—"
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 1024**2:.0f} MiB"


def format_row(row: Row) -> str:
    mode = row.mode if row.in_effect == row.mode else f"{row.mode} ({row.in_effect})"
    return (
        f"| {row.model} | {mode} | {row.width}x{row.height} | {row.count} | {row.steps} | "
        f"{_fmt(row.per_image, '{:.2f} s')} | {_fmt(row.it_per_s, '{:.2f}')} | "
        f"{size(row.peak)} | {size(row.estimate)} | "
        f"{row.load:.1f} s | {_fmt(row.overhead, '{:.2f}x')} | {row.note} |"
    )


def markdown(rows: list[Row]) -> str:
    return "\n".join([HEADER, *(format_row(row) for row in rows)])


def describe_machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        return (
            f"{props.name}, {props.total_memory / GIB:.1f} GiB, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}; peak memory = torch.cuda.max_memory_allocated"
        )
    return (
        f"NO GPU: the built-in tiny models on the CPU ({os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}); these figures test the plumbing, "
        "not a GPU. Peak memory = the rise of the process's RSS high-water mark"
    )


# -- main ---------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        w, _, h = item.strip().lower().partition("x")
        sizes.append((int(w), int(h)))
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="the bot's config file (default: embedded)")
    parser.add_argument("--models", default=None, help="comma-separated model names (default: every configured)")
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="WxH,... full-size pixels (1024x1024)")
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--modes", default=",".join(MEMORY_MODES), help="comma-separated memory modes")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--runs", type=int, default=1, help="runs per case; the medians are printed")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present) or cpu")
    args = parser.parse_args(argv)
    for mode in args.modes.split(","):
        if mode not in MEMORY_MODES:
            parser.error(f"--modes: {mode!r} is not one of {', '.join(MEMORY_MODES)}")
    return args


async def run(args: argparse.Namespace, data_dir: Path) -> tuple[str, list[Row]]:
    """Measure everything `args` asks for; (what ran where, the rows)."""
    import torch

    from inference.quiet import silence_library_output

    silence_library_output()
    cuda = args.device != "cpu" and torch.cuda.is_available()
    config = bench_config(args.config, data_dir, cpu=not cuda)
    configured = config.inference.device
    if cuda and configured not in ("auto", "cuda") and not configured.startswith("cuda:"):
        raise SystemExit(f"the config runs on {configured!r}: bench_gpu measures CUDA (or pass --device cpu)")
    device = (configured if configured.startswith("cuda") else "cuda") if cuda else "cpu"
    if cuda:
        real = [n for n in config.models if n not in TINY_MODELS]
        names = args.models.split(",") if args.models else real or list(config.models)
        args.sizes = args.sizes or [(1024, 1024)]
    else:
        # The same code on the tiny models: small sizes, few steps.
        names = [n for n in (args.models.split(",") if args.models else TINY_MODELS) if n in TINY_MODELS]
        names = names or list(TINY_MODELS)
        args.sizes = args.sizes or [(1024, 1024)]
        args.steps = args.steps or 4
    for name in names:
        if name not in config.models:
            raise SystemExit(f"--models: no model named {name!r} in the config (have: {', '.join(config.models)})")
    machine = describe_machine(device)
    print(machine, flush=True)
    rows: list[Row] = []
    for name in names:
        for mode in args.modes.split(","):
            rows.extend(await bench_model_mode(args, config, name, mode, device))
    return machine, rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        machine, rows = asyncio.run(run(args, Path(tmp)))
    print(f"\n{machine}.\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
