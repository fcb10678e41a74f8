"""benchmarks/bench_e2e.py runs its whole path (the real bot over the loopback Discord, the bare pipeline call, the
pixel check, a loop-lag burst) at the smallest settings, so it cannot rot unnoticed. No timing is asserted: only that
it finished and printed its figures."""

from __future__ import annotations

import gc
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_e2e


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-anima"])
def test_one_run_and_one_burst_print_the_ratio_and_the_lag(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        bench_e2e.main(
            ["--model", model, "--size", "64", "--steps", "1", "--counts", "1,2", "--runs", "1", "--bursts", "1",
             "--burst-jobs", "1", "--no-tags"]
        )
    finally:
        gc.unfreeze()  # the bot's collector policy froze this process's heap
    out = capsys.readouterr().out
    for count in (1, 2):
        line = next(line for line in out.splitlines() if line.startswith(f"{model} x{count}: bot "))
        assert re.search(r"ratio [\d.]+ / [\d.]+ / [\d.]+ \(min / median / max of 1 runs\)", line), line
        assert "pixels: identical" in line, line
    assert re.search(r"^bursts: 1, lag p99 [\d.]+ ms, max [\d.]+ ms", out, re.MULTILINE), out
