"""What a tag database costs `animebot generate` (run by hand; prints figures, asserts nothing).

    python benchmarks/bench_cli_tags.py [--csv PATH] [--runs N] [--repo PATH] [--generate]

Runs the CLI in fresh processes, as a user does, on a temporary data directory: `generate PROMPT --dry-run`
(and with `--generate` a real `generate` of the built-in tiny-anima model, one image) without a tag
database and with the full Danbooru list imported (``--csv``, default ../shared/data/danbooru.csv), and
prints min / median wall time of each and their ratio. ``--repo`` runs another checkout's code (e.g. the
main branch, for a before/after); the tag database is imported by that checkout too. One warm-up run per
case is not counted (file cache; the tiny model is built on the first real generate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_tags import default_csv  # noqa: E402  (benchmarks/)

PROMPT = "smile, hatsune miku, 1girl, looking at viewer, wlop, outdoors"
RUN_CLI = "import sys; from bot.cli import main; sys.exit(main(sys.argv[1:]))"


def cli(repo: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=repo, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"animebot {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return took


def measure(repo: Path, configs: dict[str, Path], runs: int, extra: list[str]) -> dict[str, list[float]]:
    """Wall times per config, the configs taking turns (so a load change on the machine hits both)."""
    argv = {
        label: ["generate", PROMPT, "--model", "tiny-anima", "--config", str(config), *extra]
        for label, config in configs.items()
    }
    for args in argv.values():
        cli(repo, *args)  # warm-up
    times: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(runs):
        for label, args in argv.items():
            times[label].append(cli(repo, *args))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=default_csv())
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    parser.add_argument("--generate", action="store_true", help="also time a real tiny-anima generate")
    args = parser.parse_args()
    repo = args.repo.resolve()
    print(f"code: {repo}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench_cli_tags_") as tmp:
        folder = Path(tmp)
        configs = {}
        for label, tags in (("no tag database", False), ("full tag list", True)):
            (folder / label).mkdir()
            config = folder / label / "config.toml"
            config.write_text('data_dir = "data"\n[tags]\nimport_default = false\n', encoding="utf-8")
            if tags:
                cli(repo, "tags", "import", str(args.csv), "--config", str(config))
            configs[label] = config
        kinds = [("--dry-run", ["--dry-run"])]
        if args.generate:
            kinds.append(("generate", ["--out", str(folder / "out"), "--steps", "4"]))
        for kind, extra in kinds:
            figures = measure(repo, configs, args.runs, extra)
            for label, times in figures.items():
                print(f"{kind:10s} {label:16s} min {min(times):.2f} s  median {statistics.median(times):.2f} s  "
                      f"({args.runs} runs)")
            base, tagged = figures["no tag database"], figures["full tag list"]
            ratio = statistics.median(tagged) / statistics.median(base)
            print(f"{kind:10s} with ÷ without the tag list: median {ratio:.3f}, min {min(tagged) / min(base):.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
