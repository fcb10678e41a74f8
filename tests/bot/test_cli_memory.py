"""Memory modes from the user's side of the command line: `animebot models` shows each model's memory setting,
the mode it would run in and that mode's features; `animebot generate` refuses at once a job that cannot fit
in any mode under [inference] vram_limit_gb (exit code 1, one line), and queues and counts nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.cli import main

# By inference.memory's arithmetic: `small`, the tiny SDXL at 1/16 scale (64x64 by default), needs 0.13 GiB in
# high mode; `big`, at 1/4 (256x256 by default, up to 512x512), 0.29 GiB at 256x256 in high mode and 1.05 GiB
# at 512x512 in its cheapest mode.
MODELS = """
[inference]
default_model = "small"
vram_limit_gb = {limit}
[quotas]
images_per_day = 5
[models.small]
builtin = "tiny-sdxl"
size_scale = 0.0625
[models.big]
builtin = "tiny-sdxl"
size_scale = 0.25
[models.local]
family = "sdxl"
path = "weights/animagine"
memory = "low"
vae = "vaes/fix.safetensors"
[models.real]
family = "sdxl"
hub = "cagliostrolab/animagine-xl-4.0"
vae = "madebyollin/sdxl-vae-fp16-fix"
"""


def write_config(folder: Path, limit: float) -> Path:
    (folder / "vaes").mkdir(exist_ok=True)
    (folder / "vaes" / "fix.safetensors").write_bytes(b"")
    path = folder / "config.toml"
    path.write_text('data_dir = "data"\n' + MODELS.format(limit=limit), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def memory_column(out: str, name: str) -> str:
    """The `memory` cell of a model's row in the table."""
    header, *lines = out.splitlines()
    start, end = header.index("memory"), header.index("source")
    (line,) = [line for line in lines if line[2:].startswith(name + " ")]
    return line[start:end].strip()


def test_models_shows_the_setting_the_mode_and_its_features(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "models", "--config", str(write_config(tmp_path, 0.2)))
    assert code == 0, err
    assert memory_column(out, "small") == "auto -> high"  # 0.13 GiB fits in 0.2: everything on the device
    assert memory_column(out, "local") == "low"  # configured
    # The real Animagine XL needs gigabytes: in 0.2 GiB auto can only pick minimal (and refuses its jobs).
    assert memory_column(out, "real") == "auto -> minimal"
    assert "device cpu: usable memory 0.2 GiB (vram_limit_gb = 0.2)" in out
    assert "high mode: vae slicing\n" in out
    assert "low mode: vae slicing, vae tiling, model cpu offload\n" in out
    assert "minimal mode: vae slicing, vae tiling, sequential cpu offload\n" in out
    assert f"local: VAE: {tmp_path / 'vaes' / 'fix.safetensors'}" in out
    assert "real: VAE: madebyollin/sdxl-vae-fp16-fix" in out
    assert "small: VAE" not in out and "big: VAE" not in out


def test_auto_follows_the_usable_memory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The same model: all on the device with no limit, CPU offload (low) under 0.12 GiB."""
    code, out, _ = run(capsys, "models", "--config", str(write_config(tmp_path, 0)))
    assert code == 0 and memory_column(out, "small") == "auto -> high"
    assert "usable memory no limit;" in out and "vram_limit_gb" not in out
    code, out, _ = run(capsys, "models", "--config", str(write_config(tmp_path, 0.12)))
    assert code == 0 and memory_column(out, "small") == "auto -> low"


def counts(data: Path) -> tuple[int, int]:
    with sqlite3.connect(data / "animebot.sqlite") as db:
        jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        usage = db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    return jobs, usage


def test_generate_refuses_a_job_that_fits_in_no_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = str(write_config(tmp_path, 0.3))
    code, out, err = run(
        capsys, "generate", "1girl", "--model", "big", "--size", "512x512", "--count", "4", "--steps", "1",
        "--config", config,
    )
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err  # one line
    assert err.startswith("animebot: error: big cannot make a 512x512 image on this bot's GPU")
    assert "needs about 1.0 GiB even in the most frugal memory mode, and 0.3 GiB is usable" in err
    assert "Try a smaller size" in err
    assert counts(tmp_path / "data") == (0, 0)  # nothing queued, nothing counted

    # The same model at a size that fits runs (the refusal was the size, not the model or the limit).
    code, out, err = run(
        capsys, "generate", "1girl", "--model", "big", "--size", "256x256", "--steps", "1", "--config", config,
    )
    assert code == 0, err
    assert len(out.splitlines()) == 1 and out.strip().endswith(".png")
    assert counts(tmp_path / "data")[0] == 1


def test_models_still_lists_when_the_configured_gpu_is_absent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_config(tmp_path, 0.2)
    path.write_text(path.read_text(encoding="utf-8").replace("[inference]\n", '[inference]\ndevice = "cuda"\n'))
    code, out, err = run(capsys, "models", "--config", str(path))
    assert code == 0, err
    assert "device cuda: device 'cuda' was asked for but CUDA is not available" in out
    assert "device cuda: usable memory 0.2 GiB (vram_limit_gb = 0.2)" in out
    assert memory_column(out, "small") == "auto -> high"
