"""The `animebot` command line, driven as a user drives it: arguments in, files and text out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from inference.png import read_parameters

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose data_dir is shared by this module (tiny models are built once)."""
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "config.toml"
    path.write_text('data_dir = "data"\n', encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_final_parameters_without_loading(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "generate", "night, 1girl, smile", "--model", "tiny-anima", "--quality", "best",
        "--year", "2019", "--rating", "safe", "--artist", "ebifurya", "--seed", "42", "--count", "2",
        "--aspect", "13:19", "--dry-run",
    )
    assert code == 0
    data = json.loads(out)
    assert data["prompt"] == "best quality, score_8, year 2019, safe, 1girl, @ebifurya, night, smile"
    assert data["negative_prompt"].startswith("worst quality, low quality, score_1")
    assert (data["width"], data["height"], data["steps"], data["cfg"]) == (112, 160, 30, 4.0)
    assert (data["seed"], data["seeds"], data["sampler"], data["model"]) == (42, [42, 43], "flow_euler", "tiny-anima")


def test_character_and_no_quality_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "generate", "smile, 1girl", "--model", "tiny-anima", "--character", "hatsune miku",
        "--quality", "none", "--dry-run",
    )
    assert code == 0
    # Anima's order: count, then the character; `none` adds no quality tags.
    assert json.loads(out)["prompt"] == "1girl, hatsune miku, smile"


def test_dry_run_imports_no_torch() -> None:
    code = (
        "import sys; from bot.cli import main; "
        "assert main(['generate', '1girl', '--dry-run']) == 0; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "1girl", "--steps", "0"], "steps must be from 1 to 150 (got 0)"),
        (["generate", "1girl", "--quality", "divine"], "has no quality 'divine'"),
        (["generate", "1girl", "--model", "ghost"], "There is no model named 'ghost'"),
        (["generate", "  "], "The prompt is empty."),
        (["generate", "1girl", "--size", "10x10"], "Size '10x10' must be WxH"),
        (["generate", "1girl", "--config", "/nonexistent/config.toml"], "config file not found"),
    ],
)
def test_bad_input_gives_a_clear_message(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and out == ""


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "1girl", "--aspect", "1:1", "--size", "64x64"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "1girl", "--steps", "many"])
    assert "not a whole number" in capsys.readouterr().err


def test_models_lists_the_builtins(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "models", "--config", str(config))
    assert code == 0
    assert "* tiny-sdxl" in out and "tiny-anima" in out and "animagine-xl-4.0" in out


def test_tags_import_and_search(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('data_dir = "d"\n', encoding="utf-8")
    csv = tmp_path / "tags.csv"
    csv.write_text('ebifurya,1,3000,""\nebi,0,100,""\nyd_(orange_maru),1,2500,"yd"\n', encoding="utf-8")
    code, _, err = run(capsys, "tags", "search", "ebi", "--config", str(cfg))
    assert code == 2 and "tags import" in err
    code, out, _ = run(capsys, "tags", "import", str(csv), "--config", str(cfg))
    assert code == 0 and "3" in out
    code, out, _ = run(capsys, "tags", "search", "ebi", "--config", str(cfg), "--model", "tiny-anima")
    assert code == 0
    assert out.splitlines()[0].split("\t") == ["@ebifurya", "artist", "3000"]
    code, out, _ = run(capsys, "tags", "search", "yd", "--category", "artist", "--config", str(cfg))
    assert out.splitlines()[0].split("\t")[0] == "yd \\(orange maru\\)"
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, _, err = run(capsys, "tags", "import", str(bad), "--config", str(cfg))
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-anima"])
def test_generate_writes_pngs_with_parameters(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path, model: str
) -> None:
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys, "generate", "1girl, smile", "--model", model, "--seed", "7", "--steps", "3",
        "--count", "2", "--size", "64x64", "--out", str(out_dir), "--config", str(config),
    )
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert len(paths) == 2 and all(p.parent == out_dir for p in paths)
    first = read_parameters(paths[0])
    assert first is not None
    # No --quality: the model's recommended quality tags are added, in the model's order.
    expected = {"tiny-sdxl": "1girl, smile, masterpiece, high score, great score, absurdres",
                "tiny-anima": "masterpiece, best quality, score_7, 1girl, smile"}[model]
    assert first.startswith(f"{expected}\nNegative prompt: ")
    assert "Steps: 3" in first and "Seed: 7" in first and "Size: 64x64" in first and f"Model: {model}" in first
    assert "Seed: 8" in (read_parameters(paths[1]) or "")
    with Image.open(paths[0]) as image:
        assert image.size == (64, 64)
        pixels = np.asarray(image)
    assert pixels.std() > 0  # an image, not a blank
    assert f"started on {model}" in err and "step" in err  # progress on the terminal

    # The same seed again gives the same picture: the second image alone, from its seed.
    code, out, _ = run(
        capsys, "generate", "1girl, smile", "--model", model, "--seed", "8", "--steps", "3",
        "--size", "64x64", "--out", str(tmp_path / "again"), "--config", str(config),
    )
    assert code == 0
    with Image.open(Path(out.strip())) as again, Image.open(paths[1]) as original:
        assert np.array_equal(np.asarray(again), np.asarray(original))


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "generate", "1girl", "--dry-run", "--seed", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["seed"] == 1


def test_work_refuses_a_paused_queue_until_resumed(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    import asyncio

    from bot.config import load_config
    from bot.core.service import GenerationService
    from bot.prompts.builder import PromptChoices
    from bot.prompts.requests import GenerationRequest

    async def submit_paused() -> int:
        service = GenerationService(load_config(config))
        await service.start()
        try:
            await service.set_paused(True)
            job = await service.submit(
                GenerationRequest("tiny-anima", PromptChoices("1girl"), size="64x64", steps=1), "cli:test", exempt=True
            )
            return job.id
        finally:
            await service.close()

    job_id = asyncio.run(submit_paused())
    code, _, err = run(capsys, "work", "--config", str(config))
    assert code == 2 and "work --resume" in err
    code, out, _ = run(capsys, "work", "--resume", "--config", str(config))
    assert code == 0 and f"job #{job_id}: done" in out


def test_an_unusable_tag_database_is_an_error_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('data_dir = "d"\n', encoding="utf-8")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tags.sqlite").write_bytes(b"not a database at all" * 100)
    for args in (["tags", "search", "ebi"], ["generate", "1girl", "--dry-run"]):
        code, out, err = run(capsys, *args, "--config", str(cfg))
        assert code == 2 and out == "" and "is not a SQLite database" in err, args


def test_dry_run_refuses_a_banned_word_as_generate_does(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The dry run shows what `generate` would do: a banned word of the config is refused there too."""
    config = tmp_path / "config.toml"
    config.write_text('data_dir = "d"\n[discord]\nbanned_words = ["forbidden"]\n', encoding="utf-8")
    code, out, err = run(capsys, "generate", "1girl, ｆｏｒｂｉｄｄｅｎ", "--config", str(config), "--dry-run")
    assert code == 2 and out == "" and "forbidden" in err
    assert run(capsys, "generate", "1girl, smile", "--config", str(config), "--dry-run")[0] == 0
