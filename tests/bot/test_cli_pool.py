"""`animebot generate` in `[workers] mode = "redis"`: with no worker online the job is still queued, the
terminal says it waits for a worker, and it runs when one connects (here a real in-process worker on the tiny
model, standing in for the pool dispatcher until it is merged: tests/fakes/pool_executor.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from bot.core.service import GenerationService
from tests.fakes.pool_executor import LateLocalPool


def test_generate_says_the_job_waits_for_a_worker_then_runs_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(models_dir, target_is_directory=True)  # the session's tiny models
    config = tmp_path / "config.toml"
    config.write_text('data_dir = "data"\n[workers]\nmode = "redis"\nurl = "redis://127.0.0.1:6399"\n', "utf-8")
    pools: list[LateLocalPool] = []

    def late_pool(service: GenerationService) -> LateLocalPool:
        pools.append(LateLocalPool(service))
        return pools[-1]

    monkeypatch.setattr("bot.core.service.pool_dispatcher", late_pool)
    code = main(["generate", "1girl", "--steps", "2", "--size", "64x64", "--config", str(config),
                 "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "No worker is online right now: your job waits in the queue and starts when a worker connects." in err
    assert err.index("No worker is online") < err.index("started on tiny-sdxl")
    (path,) = [Path(line) for line in out.splitlines()]
    with Image.open(path) as image:
        assert image.size == (64, 64)
    assert pools[0].seen_offline
