"""benchmarks/bench_lora.py runs with its smallest settings and prints every figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_lora


def test_the_benchmark_runs_and_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    bench_lora.main(["--models", "sdxl", "--samples", "1", "--steps", "1", "--library", "2", "--hash-mb", "1"])
    out = capsys.readouterr().out
    assert "load average" in out
    assert "sdxl: 64x64, 1 steps, median of 1: plain" in out and "cached LoRA" in out and "plain after" in out
    assert "library: 2 files, cold scan" in out and "MB/s" in out
