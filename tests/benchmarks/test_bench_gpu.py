"""benchmarks/bench_gpu.py runs its whole path (service, queue, worker, bare calls, the table) on the tiny
models, so it cannot rot unnoticed. No timing is asserted: only that every case ran and was reported."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_gpu

from inference.memory import MEMORY_MODES


def test_every_case_runs_through_the_queue_in_its_mode_and_lands_in_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []  # spec.memory of every model the worker loads
    worker_class = bench_gpu.make_worker_class()
    original = worker_class.load_model

    async def load_model(self: object, spec: bench_gpu.ModelSpec) -> object:
        loaded.append(spec.memory)
        return await original(self, spec)

    monkeypatch.setattr(worker_class, "load_model", load_model)
    monkeypatch.setattr(bench_gpu, "make_worker_class", lambda: worker_class)
    args = bench_gpu.parse_args(
        ["--device", "cpu", "--models", "tiny-anima", "--modes", "low,minimal", "--counts", "1,2", "--steps", "2"]
    )
    machine, rows = asyncio.run(bench_gpu.run(args, tmp_path))

    assert machine.startswith("NO GPU")
    # Each mode is set on the spec (dataclasses.replace) before its model loads, for the bare calls and the jobs.
    assert list(dict.fromkeys(loaded)) == ["low", "minimal"]
    assert loaded == sorted(loaded, key=["low", "minimal"].index)
    assert [(r.model, r.mode, r.count) for r in rows] == [
        ("tiny-anima", mode, count) for mode in ("low", "minimal") for count in (1, 2)
    ]
    for row in rows:
        assert row.note == ""
        assert (row.width, row.height, row.steps) == (128, 128, 2)  # 1024x1024 scaled like the bot scales it
        assert row.in_effect in MEMORY_MODES
        assert row.bare is not None and row.bare > 0
        assert row.job is not None and row.job > 0  # the job went through the queue and was recorded done
        assert row.it_per_s is not None and row.it_per_s > 0
        assert row.estimate > 0 and row.load > 0
    table = bench_gpu.markdown(rows).splitlines()
    assert table[0].startswith("| model | mode (in effect) | size | count |")
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_it_per_s_ignores_the_gap_between_two_images() -> None:
    # Four steps 0.5 s apart, a 10 s decode + next image's set-up, four more steps.
    times = [0.0, 0.5, 1.0, 1.5, 11.5, 12.0, 12.5, 13.0]
    assert bench_gpu.steps_per_second(times) == pytest.approx(2.0)
    assert bench_gpu.steps_per_second([1.0]) is None


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--modes", "high,turbo"])
