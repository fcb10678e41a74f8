"""`animebot doctor` through the CLI on real files: a good install, a missing model file, malformed tokens,
a damaged database, hub models in (and not in) the local cache. Doctor reads and never writes."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path

import pytest

from bot.cli import main
from bot.core.store import Store
from bot.doctor import bot_user_id, token_problem
from bot.prompts.tags import import_csv

BOT_ID = 112233445566778899
GOOD_TOKEN = f"{base64.urlsafe_b64encode(str(BOT_ID).encode()).decode().rstrip('=')}.GhJkLm.{'a1B2-c3_D4' * 3}"


def doctor(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[int, list[str]]:
    code = main(["doctor", "--config", str(config)])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out.splitlines()


def lines_of(lines: list[str], prefix: str) -> list[str]:
    return [line for line in lines if line.startswith(prefix)]


def write_config(folder: Path, text: str = "") -> Path:
    path = folder / "config.toml"
    path.write_text('data_dir = "data"\n' + text, encoding="utf-8")
    return path


def make_database(data: Path) -> Path:
    """The bot's database as `run` leaves it (created and migrated by the real store), with some rows."""

    async def create() -> None:
        store = await Store.open(data / "animebot.sqlite")
        await store.close()

    asyncio.run(create())
    database = data / "animebot.sqlite"
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO bot_state (key, value) VALUES (?, ?)", [(f"key {i:05d}", "value " * 20) for i in range(3000)]
        )
    connection.close()
    return database


@pytest.fixture
def good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ready install: tiny models, a token in the environment, a healthy database and a tag database."""
    monkeypatch.setenv("DISCORD_TOKEN", GOOD_TOKEN)
    data = tmp_path / "data"
    data.mkdir()
    make_database(data)
    csv = tmp_path / "tags.csv"
    csv.write_text("name,category,count,aliases\n1girl,0,1000,\nsmile,0,900,\n", encoding="utf-8")
    import_csv(csv, data / "tags.sqlite")
    return write_config(tmp_path)


def test_a_good_install_is_ready(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    database = good.parent / "data" / "animebot.sqlite"
    before = {p.name: p.stat().st_mtime_ns for p in database.parent.iterdir()}
    code, lines = doctor(capsys, good)
    assert code == 0, lines
    assert lines_of(lines, "[error]") == []
    assert lines_of(lines, "[ok] python: 3.")
    assert lines_of(lines, "[ok] torch: 2.")
    assert lines_of(lines, "[ok] model tiny-sdxl: memory mode auto -> high")
    assert lines_of(lines, "[ok] model tiny-sdxl: built-in tiny model")
    assert lines_of(lines, f"[ok] discord token: from DISCORD_TOKEN (environment): well-formed (bot user id {BOT_ID})")
    assert lines_of(lines, "[ok] data dir: ")
    assert lines_of(lines, f"[ok] database: {database}: healthy (quick_check ok), schema version ")
    assert lines_of(lines, "[ok] tag database: ") and "2 tags" in lines_of(lines, "[ok] tag database: ")[0]
    assert lines[-1].startswith("ready for `animebot run`")
    assert GOOD_TOKEN not in "\n".join(lines)
    # Nothing was written: no lock file, no -wal/-shm, no file touched.
    assert {p.name: p.stat().st_mtime_ns for p in database.parent.iterdir()} == before


def test_missing_model_file_of_the_default_model_blocks_run(
    capsys: pytest.CaptureFixture[str], good: Path
) -> None:
    write_config(
        good.parent,
        '[inference]\ndefault_model = "real"\n'
        '[models.real]\nfamily = "sdxl"\nfile = "checkpoints/animagine.safetensors"\nconfig = "./sdxl-configs"\n'
        '[models.other]\nfamily = "sdxl"\npath = "models/elsewhere"\n',
    )
    (good.parent / "sdxl-configs").mkdir()
    code, lines = doctor(capsys, good)
    assert code == 1
    missing = good.parent / "checkpoints" / "animagine.safetensors"
    assert (
        f"[error] model real: checkpoint {missing} not found -> fix: put the .safetensors checkpoint there, "
        "or correct `file` in [models.real]"
    ) in lines
    assert f"[ok] model real config: folder {good.parent / 'sdxl-configs'}" in lines
    # Another model's missing folder is a warning: `run` serves the default one.
    (other,) = lines_of(lines, "[warn] model other: ")
    assert f"diffusers folder {good.parent / 'models' / 'elsewhere'} does not exist -> fix: correct `path`" in other
    assert lines[-1].startswith("1 problem(s) block `animebot run`, ")


def test_a_missing_non_default_model_is_a_warning(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    write_config(good.parent, '[models.other]\nfamily = "anima"\ncomfyui = { root = "comfy" }\n')
    code, lines = doctor(capsys, good)
    assert code == 0
    (line,) = lines_of(lines, "[warn] model other: missing ComfyUI file(s): diffusion_model ")
    assert "-> fix: check `comfyui` root and file names in [models.other]" in line


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("not-a-token", "it is not three base64url parts separated by dots"),
        (f"Bot {GOOD_TOKEN}", 'it starts with "Bot ": give the token alone'),
        (f" {GOOD_TOKEN}", "it has spaces or quotes around it"),
        ("abcdefghijklmnopqrstuvwxyzABCDEF", "it looks like the OAuth2 client secret, not the bot token"),
        ("aGVsbG8.GhJkLm.xyzxyzxyz", "its first part is not a bot's user id"),
        ("a.b.c+d", "it is not three base64url parts separated by dots"),
    ],
)
def test_a_malformed_token_blocks_run_and_is_never_printed(
    capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch, token: str, problem: str
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", token)
    code, lines = doctor(capsys, good)
    assert code == 1
    (line,) = lines_of(lines, "[error] discord token: ")
    assert line.startswith(f"[error] discord token: from DISCORD_TOKEN (environment): malformed: {problem} -> fix: ")
    assert token.strip() not in "\n".join(lines)


def test_no_token_blocks_run(capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCORD_TOKEN")
    code, lines = doctor(capsys, good)
    assert code == 1
    assert len(lines_of(lines, "[error] discord token: none set (DISCORD_TOKEN or [discord] token) -> fix: ")) == 1


def test_a_token_in_a_readable_config_file_is_a_warning(
    capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_TOKEN")
    write_config(good.parent, f'[discord]\ntoken = "{GOOD_TOKEN}"\n')
    good.chmod(0o644)
    code, lines = doctor(capsys, good)
    assert code == 0
    assert lines_of(lines, f"[ok] discord token: from [discord] token in {good}: well-formed")
    assert lines_of(lines, f"[warn] discord token: {good} (which holds the token) is readable by other users -> fix: ")
    good.chmod(0o600)
    _, lines = doctor(capsys, good)
    assert lines_of(lines, "[warn] discord token") == []
    assert GOOD_TOKEN not in "\n".join(lines)


def test_token_shape() -> None:
    assert token_problem(GOOD_TOKEN) is None and bot_user_id(GOOD_TOKEN) == BOT_ID
    assert token_problem("a.b") is not None


def test_a_damaged_database_blocks_run(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    database = good.parent / "data" / "animebot.sqlite"
    data = bytearray(database.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[10 * page + 64 : 12 * page] = b"\x55" * (2 * page - 64)  # two pages of the table, overwritten
    database.write_bytes(bytes(data))
    code, lines = doctor(capsys, good)
    assert code == 1
    (line,) = lines_of(lines, f"[error] database: {database} is damaged")
    assert line.endswith(f"-> fix: restore it from your backup, or `sqlite3 {database} .recover`")
    assert lines[-1].startswith("1 problem(s) block `animebot run`")


def test_a_damaged_database_names_its_latest_backup(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    database = good.parent / "data" / "animebot.sqlite"
    database.write_bytes(b"this is not a database at all, but quite long enough to look at" * 100)
    (database.parent / "animebot.sqlite.v2.bak").write_bytes(b"")
    (database.parent / "animebot.sqlite.v3.bak").write_bytes(b"")
    code, lines = doctor(capsys, good)
    assert code == 1
    assert (
        f"[error] database: {database} is not an SQLite database -> fix: move it away (`run` then starts an empty "
        "one) or restore a backup (e.g. animebot.sqlite.v3.bak)"
    ) in lines


def test_an_old_schema_is_migrated_at_start_and_a_newer_one_blocks(
    capsys: pytest.CaptureFixture[str], good: Path
) -> None:
    database = good.parent / "data" / "animebot.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA user_version = 2")
    connection.close()
    code, lines = doctor(capsys, good)
    assert code == 0
    assert lines_of(lines, "[info] database: healthy; schema version 2 is migrated to ")
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA user_version = 99")
    connection.close()
    code, lines = doctor(capsys, good)
    assert code == 1
    assert lines_of(lines, "[error] database: schema version 99 is newer than this bot's ")


def test_a_database_in_use_is_read_with_the_bot_running(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    """The running bot holds the lock and has its -wal file open: doctor says so, still checks, takes nothing."""
    from bot.core.lock import ProcessLock

    database = good.parent / "data" / "animebot.sqlite"
    lock = ProcessLock.acquire(database)
    connection = sqlite3.connect(database)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("INSERT INTO bot_state (key, value) VALUES ('open', 'yes')")
        connection.commit()
        assert Path(f"{database}-wal").exists()
        code, lines = doctor(capsys, good)
        assert code == 0
        assert lines_of(lines, "[info] database: in use by a running bot (pid ")
        assert lines_of(lines, f"[ok] database: {database}: healthy")
        with pytest.raises(Exception, match="another animebot process"):
            ProcessLock.acquire(database)  # still ours
    finally:
        connection.close()
        lock.release()


def test_a_broken_tag_database_blocks_run(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    (good.parent / "data" / "tags.sqlite").write_bytes(b"garbage" * 1000)
    code, lines = doctor(capsys, good)
    assert code == 1
    (line,) = lines_of(lines, "[error] tag database: ")
    assert line.endswith("-> fix: re-import it: `animebot tags import FILE`")


def test_no_tag_database_is_a_warning(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    (good.parent / "data" / "tags.sqlite").unlink()
    code, lines = doctor(capsys, good)
    assert code == 0
    assert lines_of(lines, "[warn] tag database: none at ")


def test_hub_models_in_the_cache_offline_and_unknown(
    capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A hub model found in the local HF cache (a real cache layout) is ready; one that is not, with
    local_files_only, blocks run when it is the default; nothing is downloaded."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--org--cached" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}", encoding="utf-8")
    (cache / "models--org--cached" / "refs").mkdir()
    (cache / "models--org--cached" / "refs" / "main").write_text("0123abcd", encoding="utf-8")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    write_config(
        good.parent,
        '[inference]\ndefault_model = "absent"\nlocal_files_only = true\n'
        '[models.cached]\nfamily = "sdxl"\nhub = "org/cached"\n'
        '[models.absent]\nfamily = "sdxl"\nhub = "org/absent"\n',
    )
    code, lines = doctor(capsys, good)
    assert code == 1
    assert "[ok] model cached: hub org/cached: in the local Hugging Face cache" in lines
    assert (
        "[error] model absent: hub org/absent: not in the local cache, and local_files_only is on -> fix: download "
        "it while online (`hf download org/absent`), or set [inference] local_files_only = false"
    ) in lines
    assert list(cache.iterdir()) == [cache / "models--org--cached"]


def test_an_unreachable_hub_is_a_warning(
    capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hf, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    write_config(good.parent, '[models.far]\nfamily = "sdxl"\nhub = "org/far"\n')
    code, lines = doctor(capsys, good)
    assert code == 0
    (line,) = lines_of(lines, "[warn] model far: hub org/far: not in the local cache and the hub cannot be reached")
    assert line.endswith(
        "-> fix: check the network (or HF_ENDPOINT), or download it while online (`hf download org/far`)"
    )


def test_configured_device_that_is_absent_blocks_run(capsys: pytest.CaptureFixture[str], good: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_config(good.parent, '[inference]\ndevice = "cuda"\n')
    code, lines = doctor(capsys, good)
    assert code == 1
    assert len(lines_of(lines, "[error] device: device 'cuda' was asked for but CUDA is not available -> fix: ")) == 1
    assert lines_of(lines, "[ok] model tiny-sdxl: memory mode") == []  # no device: no mode to show


@pytest.mark.parametrize(
    ("free_gib", "expected"),
    [
        (11.2, "[ok] model real: memory mode auto -> balanced: vae slicing, vae tiling, text encoders offloaded"),
        (6.0, "[ok] model real: memory mode auto -> low: vae slicing, vae tiling, model cpu offload"),
        (1.0, "[warn] model real: memory mode auto -> minimal: vae slicing, vae tiling, sequential cpu offload; a "
              "1024x1024 image does not fit in 1.0 GiB in any mode, so its jobs are refused -> fix: free GPU memory"),
    ],
)
def test_on_a_cuda_card_the_usable_memory_picks_each_model_s_mode(
    capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch, free_gib: float, expected: str
) -> None:
    """The GPU path, on a machine without one: torch.cuda reports a 12 GiB card with `free_gib` free. The usable
    memory is computed as the worker does (inference.device.device_budget) and auto's mode follows from it."""
    import torch

    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (int(free_gib * gib), 12 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA Fake 12G")
    models = good.parent / "models" / "real"
    models.mkdir(parents=True)
    (models / "model_index.json").write_text("{}", encoding="utf-8")
    write_config(good.parent, '[inference]\ndevice = "cuda"\n[models.real]\nfamily = "sdxl"\npath = "models/real"\n')
    code, lines = doctor(capsys, good)
    assert code == 0, lines
    usable = f"{free_gib:.1f} GiB"
    assert f"[ok] device: cuda (NVIDIA Fake 12G): {usable} free of 12.0 GiB; usable {usable}" in lines
    assert [line for line in lines if line.startswith(expected)], lines
    assert lines_of(lines, "[ok] model tiny-sdxl: memory mode auto -> high")  # tiny weights fit anywhere


def test_vram_limit_caps_the_usable_memory(
    capsys: pytest.CaptureFixture[str], good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (20 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA Fake 24G")
    write_config(good.parent, '[inference]\ndevice = "cuda"\nvram_limit_gb = 6\n')
    code, lines = doctor(capsys, good)
    assert code == 0
    assert (
        "[ok] device: cuda (NVIDIA Fake 24G): 20.0 GiB free of 24.0 GiB; usable 6.0 GiB, capped by vram_limit_gb = 6"
        in lines
    )
