"""benchmarks/bench_upscale.py runs its whole path (both tiny models, a plain, an upscale and a hires job from one
load) at its smallest settings, so it cannot rot unnoticed. No timing is asserted: only that every figure printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_smallest_settings_run_and_print_every_figure() -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_upscale.py"), "--size", "32", "--steps", "2"]
    command += ["--repeats", "1", "--scales", "1.5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("load average") == 2, out
    for model in ("tiny-sdxl", "tiny-anima"):
        assert f"{model}: 1 load(s)" in out, out
        line = next(line for line in out.splitlines() if line.startswith(f"{model} x1.5 -> 48x48: "))
        for figure in ("parent ", "plain ", "upscale ", "x plain", "hires "):
            assert figure in line, line
        # 2 steps at strength 0.35: SDXL runs int(0.7) -> at least 1, Anima 2 - int(1.3) = 1; hires: 2 + 1.
        assert "    steps run: parent 2, plain 2, upscale 1, hires 3" in out, out


def test_an_unknown_model_is_refused() -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_upscale.py"), "--models", "tiny-sd15"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown model(s): tiny-sd15" in result.stderr
