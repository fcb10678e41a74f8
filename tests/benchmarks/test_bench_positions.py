"""benchmarks/bench_positions.py runs its three parts (the announcer per job start, memory per job through
/generate, a restart with waiting jobs) with the smallest settings, so it cannot rot unnoticed. No figure is
asserted: only that every part ran and printed its line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_positions


def test_every_part_runs_and_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    bench_positions.main(["--followed", "40", "--starts", "2", "--acks", "3", "--restart", "25"])
    out = capsys.readouterr().out
    assert "40 followed:" in out and "events per start" in out
    assert "for 3 waiting jobs" in out and "delivery tasks alive: 0" in out
    assert "every waiting job kept after" in out and "max stall" in out
