"""Every mistake in the config, the data folder or the arguments is one line on stderr with exit code 2
(usage) or 1 (runtime), never a traceback; and nothing is written before it is found."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import bot.prompts.tags.db as tags_db
from bot.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("animebot: error: "), err
    return lines[0]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the config file ------------------------------------------------------------------------------


def test_invalid_utf8_in_the_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b'data_dir = "d"\n[discord]\nbanned_words = ["caf\xe9"]\n')
    code, out, err = run(capsys, "generate", "1girl", "--dry-run", "--config", str(config))
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert str(config) in line and "line 3: not valid UTF-8 (byte 0xe9)" in line


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e300"])
def test_cooldown_must_be_a_finite_sensible_number(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    config = write_config(tmp_path, f"[quotas]\ncooldown_seconds = {value}\n")
    code, _, err = run(capsys, "models", "--config", str(config))
    assert code == 2
    line = one_line_error(err)
    assert f"{config}: quotas.cooldown_seconds: " in line


def test_tags_database_set_to_the_main_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Bug 12: `tags import` used to stamp the main database, and every later start failed."""
    config = write_config(tmp_path, 'data_dir = "d"\n[tags]\ndatabase = "animebot.sqlite"\n')
    csv = tmp_path / "tags.csv"
    csv.write_text("1girl,0,10,\nsolo,0,5,\n", encoding="utf-8")
    code, _, err = run(capsys, "tags", "import", str(csv), "--config", str(config))
    assert code == 2
    assert "tags.database: " in one_line_error(err) and "is the bot's main database" in err
    assert not (tmp_path / "d").exists()  # nothing was written


# --- data_dir -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_dir", "message"),
    [
        ("a_file", "a_file exists and is not a folder"),
        ("a_file/inside", "a_file is a file, not a folder"),
        ("/dev/null", "/dev/null exists and is not a folder"),
        ("n" * 300, "File name too long"),  # the config's own path checks stat it too
    ],
)
@pytest.mark.parametrize("command", [["work"], ["generate", "1girl"], ["run"]])
def test_data_dir_that_is_not_a_folder(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data_dir: str,
    message: str,
    command: list[str],
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "not-a-real-token")  # `run` gets as far as the data folder
    (tmp_path / "a_file").write_text("not a folder\n", encoding="utf-8")
    config = write_config(tmp_path, f'data_dir = "{data_dir}"\n')
    code, out, err = run(capsys, *command, "--config", str(config))
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert f"{config}: data_dir: " in line and message in line


@pytest.mark.parametrize("command", [["generate", "1girl", "--dry-run"], ["tags", "search", "ebi"]])
def test_a_data_dir_name_too_long_to_look_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    """The dry run and the tag search need no data folder, but look for the tag database in it."""
    config = write_config(tmp_path, f'data_dir = "{"n" * 300}"\n')
    code, out, err = run(capsys, *command, "--config", str(config))
    assert code == 2 and out == ""
    assert "File name too long" in one_line_error(err)


# --- --out ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("out", "message"), [("a_file", "exists and is not a folder"), ("a_file/x", "is a file")])
def test_out_pointing_at_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, out: str, message: str) -> None:
    (tmp_path / "a_file").write_text("precious\n", encoding="utf-8")
    config = write_config(tmp_path, 'data_dir = "d"\n')
    code, _, err = run(
        capsys, "generate", "1girl", "--size", "64x64", "--out", str(tmp_path / out), "--config", str(config)
    )
    assert code == 2
    line = one_line_error(err)
    assert "--out " in line and message in line
    assert not (tmp_path / "d").exists()  # refused before anything was queued
    assert (tmp_path / "a_file").read_text(encoding="utf-8") == "precious\n"


# --- the tag database -----------------------------------------------------------------------------


def test_tag_csv_with_a_post_count_beyond_sqlite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, 'data_dir = "d"\n')
    csv = tmp_path / "tags.csv"
    csv.write_text(f"huge,0,{2**63},\nsolo,0,5,\nsmile,0,4,\nmax,0,{2**63 - 1},\n", encoding="utf-8")
    code, out, err = run(capsys, "tags", "import", str(csv), "--config", str(config))
    assert code == 0, err
    assert "imported 3 tags" in out and "line 1: post count '9223372036854775808' is too large" in out
    code, out, _ = run(capsys, "tags", "search", "", "--config", str(config))
    assert code == 0 and out.splitlines()[0] == f"max\tgeneral\t{2**63 - 1}"


@pytest.fixture
def locked_tag_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A config whose tag database another process holds an exclusive lock on."""
    config = write_config(tmp_path, 'data_dir = "d"\n')
    csv = tmp_path / "tags.csv"
    csv.write_text("ebifurya,1,3000,\nsolo,0,5,\n", encoding="utf-8")
    assert main(["tags", "import", str(csv), "--config", str(config)]) == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
         str(tmp_path / "d" / "tags.sqlite")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(tags_db, "BUSY_TIMEOUT", 0.2)
        yield config
    finally:
        holder.communicate("")


@pytest.mark.parametrize("args", [["tags", "search", "ebi"], ["generate", "1girl", "--dry-run"], ["tags", "import"]])
def test_a_locked_tag_database_is_called_locked(
    capsys: pytest.CaptureFixture[str], locked_tag_db: Path, args: list[str]
) -> None:
    """Bug 13: it used to be called "not a usable SQLite database"."""
    capsys.readouterr()
    if args[-1] == "import":
        args = [*args, str(locked_tag_db.parent / "tags.csv")]
    code, out, err = run(capsys, *args, "--config", str(locked_tag_db))
    assert code == 1 and out == ""
    line = one_line_error(err)
    assert "is locked by another process" in line and "try again" in line
    assert "not a" not in line


# --- a read-only data folder (a read-only bind mount in a user namespace; root ignores chmod) -----


def _can_mount_read_only() -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0"', folder], capture_output=True
        )
    return probe.returncode == 0


needs_ro_mount = pytest.mark.skipif(not _can_mount_read_only(), reason="cannot make a read-only mount here")


def run_on_read_only(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` with `folder` mounted read-only (for this process only)."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), sys.executable, "-m", "bot", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


@needs_ro_mount
def test_read_only_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    config = write_config(tmp_path, f'data_dir = "{data}"\n')
    for args in (["work"], ["generate", "1girl", "--size", "64x64"]):
        result = run_on_read_only(data, *args, "--config", str(config))
        assert result.returncode == 2, result.stderr
        line = one_line_error(result.stderr)
        assert f"data_dir: cannot write in {data}: Read-only file system" in line
    assert list(data.iterdir()) == []


@needs_ro_mount
def test_read_only_tag_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'data_dir = "d"\n')
    csv = tmp_path / "tags.csv"
    csv.write_text("ebifurya,1,3000,\nsolo,0,5,\n", encoding="utf-8")
    assert main(["tags", "import", str(csv), "--config", str(config)]) == 0
    before = (tmp_path / "d" / "tags.sqlite").read_bytes()
    result = run_on_read_only(tmp_path / "d", "tags", "import", str(csv), "--config", str(config))
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "is read-only" in line and "not a" not in line
    # Reading it still works.
    result = run_on_read_only(tmp_path / "d", "tags", "search", "ebi", "--config", str(config))
    assert result.returncode == 0 and result.stdout.startswith("ebifurya\tartist\t3000")
    assert (tmp_path / "d" / "tags.sqlite").read_bytes() == before


def test_a_corrupt_tag_database_and_another_schema_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, 'data_dir = "d"\n')
    (tmp_path / "d").mkdir()
    db = tmp_path / "d" / "tags.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    code, _, err = run(capsys, "tags", "search", "x", "--config", str(config))
    assert code == 2 and "is not a SQLite database or is corrupt" in one_line_error(err)
    db.unlink()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tags (x)")
        conn.execute("CREATE TABLE tag_aliases (x)")
        conn.execute("CREATE TABLE tag_meta (x)")
        conn.execute("PRAGMA user_version = 7")
    code, _, err = run(capsys, "tags", "search", "x", "--config", str(config))
    assert code == 2 and "has tag schema version 7, this code needs 1; re-import" in one_line_error(err)
