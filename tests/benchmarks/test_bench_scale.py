"""benchmarks/bench_scale.py runs its whole path (a fresh process per setting, the real bot over the loopback
Discord, the restart, the acknowledgements, the edits run) at its smallest settings, so it cannot rot
unnoticed. No timing is asserted: only that every setting ran and printed each of its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_smallest_settings_run_and_print_every_figure() -> None:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--sizes", "10", "--acks", "2"]
    command += ["--edit-sizes", "4", "--window", "1", "--settle", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "failed" not in out, out
    assert "waiting 10 (load" in out, out
    for figure in ("/generate ack p50/p99/max", "service.submit p50/p99/max", "/queue ack", "/history ack"):
        assert out.count(figure) == 1, out
    assert out.count("RSS idle") == 1 and out.count("restart: ready") == 1, out
    assert "queued 4 through /generate" in out and "position edits per job" in out, out
