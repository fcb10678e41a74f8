"""`animebot describe FILE`, driven as a user drives it, with the tiny stand-in tagger in a folder the
config names (the real tagger code path: file checks, preprocessing, thresholds, the dialect)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main
from inference.tiny.tagger import write_tiny_tagger

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("describe")
    write_tiny_tagger(folder / "wd-tiny")
    path = folder / "config.toml"
    # A relative folder, resolved from the config's folder.
    path.write_text('data_dir = "data"\n[tagger]\nmodel = "./wd-tiny"\nmax_upload_mb = 1\n', encoding="utf-8")
    return path


def image(folder: Path, color: tuple[int, int, int], name: str = "image.png", size: tuple[int, int] = (64, 64)) -> Path:
    path = folder / name
    Image.new("RGB", size, color).save(path)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_prints_the_prompt_then_rating_and_tags(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "describe", str(image(tmp_path, (0, 0, 255))), "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "1girl, ganyu \\(genshin impact\\), solo"
    assert lines[1].startswith("rating: general 1.00 (sensitive 0.12,")
    assert lines[2] == "characters: ganyu_(genshin_impact) 1.00"
    assert lines[3] == "general: 1girl 0.98, solo 0.95"


def test_describe_json_and_thresholds(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    red = str(image(tmp_path, (255, 0, 0), "red.jpg"))
    code, out, _ = run(capsys, "describe", red, "--config", str(config), "--json", "--character-threshold", "0.5")
    assert code == 0
    data = json.loads(out)
    assert data["rating"] == "explicit" and set(data["rating_scores"]) == {
        "general", "sensitive", "questionable", "explicit"
    }
    assert [t for t, _ in data["characters"]] == ["hatsune_miku"]
    assert data["prompt"] == "1girl, hatsune miku, solo" and data["model"] == "tiny-sdxl"
    code, out, _ = run(capsys, "describe", red, "--config", str(config), "--json", "--general-threshold", "0.97")
    assert [t for t, _ in json.loads(out)["general"]] == ["1girl"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"just text") or p, "not an image I can read"),
        (lambda p: p.write_bytes(b"\0" * (2 * 1024 * 1024)) or p, "too big (2.0 MB; at most 1 MB)"),
        (lambda p: p, "No such file or directory"),
    ],
    ids=["text", "too-big", "missing"],
)
def test_bad_files_are_one_line_usage_errors(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    path = tmp_path / "upload.png"
    make(path)  # type: ignore[operator]
    code, out, err = run(capsys, "describe", str(path), "--config", str(config))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("animebot: error: ")


def test_a_decompression_bomb_is_refused(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (6000, 5000)).save(bomb)
    code, _, err = run(capsys, "describe", str(bomb), "--config", str(config))
    assert code == 2 and "too many pixels" in err


def test_bad_options(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(image(tmp_path, (0, 0, 0)))
    code, _, err = run(capsys, "describe", path, "--config", str(config), "--general-threshold", "0")
    assert code == 2 and "--general-threshold must be more than 0" in err
    code, _, err = run(capsys, "describe", path, "--config", str(config), "--model", "nope")
    assert code == 2 and "unknown model 'nope'" in err


def test_no_tagger_is_a_one_line_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[tagger]\nmodel = "./missing-tagger"\n', encoding="utf-8")
    code, _, err = run(capsys, "describe", str(image(tmp_path, (0, 0, 0))), "--config", str(config))
    assert code == 1 and err.count("\n") == 1 and "missing-tagger" in err


def test_describe_loads_no_torch(config: Path, tmp_path: Path) -> None:
    path = image(tmp_path, (255, 255, 255))
    code = (
        "import sys; from bot.cli import main; "
        f"assert main(['describe', {str(path)!r}, '--config', {str(config)!r}]) == 0; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "1girl, smile, solo"


def test_tagger_config(tmp_path: Path) -> None:
    from bot.config import ConfigError, load_config

    config = tmp_path / "config.toml"
    config.write_text("[inference]\nlocal_files_only = true\n", encoding="utf-8")
    options = load_config(config).tagger_options
    assert options.source == "SmilingWolf/wd-vit-tagger-v3" and options.local_files_only
    assert (options.general_threshold, options.character_threshold, options.device) == (0.35, 0.85, "cpu")
    (tmp_path / "org" / "name").mkdir(parents=True)  # a folder spelled like a hub id is the folder
    config.write_text('[tagger]\nmodel = "org/name"\n', encoding="utf-8")
    assert load_config(config).tagger_options.source == str(tmp_path / "org" / "name")
    config.write_text('[tagger]\nmodel = "wd/tagger"\ngeneral_threshold = 0.5\n', encoding="utf-8")
    options = load_config(config).tagger_options
    assert options.source == "wd/tagger" and options.general_threshold == 0.5
    for bad in ("general_threshold = 1.5", "character_threshold = 0", 'device = "mps"', "max_upload_mb = -1"):
        config.write_text(f"[tagger]\n{bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="tagger"):
            load_config(config)
