"""`animebot doctor`: what would stop `animebot run`, or make it work badly, found before starting it.

Each check reads and never writes: no download, no process lock, no migration, no file created (the
database is opened read-only, and `immutable` when no bot has it open). A finding is one line; a problem
says how to fix it on the same line. `error` findings block `run` (exit code 1); `warn` ones do not.
"""

from __future__ import annotations

import base64
import binascii
import os
import platform
import re
import shutil
import sqlite3
import stat
import sys
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

from bot.config import Config
from bot.core.lock import lock_path
from bot.core.pool.protocol import Heartbeat, Keys, ProtocolError
from bot.core.store import SCHEMA_VERSION
from inference.specs import (
    BuiltinSource,
    ComfyUISource,
    DirSource,
    HubSource,
    ModelSpec,
    SingleFileSource,
    VaeFileSource,
    VaeSource,
)

Level = Literal["ok", "info", "warn", "error"]
MIN_PYTHON = (3, 11)
MIB = 1024**2
GIB = 1024**3
DISK_ERROR_BYTES = 256 * MIB  # below this the database and images cannot grow: `run` would fail soon
DISK_WARN_BYTES = 4 * GIB  # below this a real model (6-7 GB) does not fit, and images fill it up
HUB_TIMEOUT = 10.0  # seconds for one hub metadata request
# A bot token: base64url(user id) . base64url(timestamp) . base64url(HMAC)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_INDEX_FILES = ("model_index.json", "modular_model_index.json")
_TORCH_HELP = "https://pytorch.org/get-started/locally/"
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,100}$")  # a worker id (bot/core/pool/protocol.py): safe in a key name


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    text: str
    fix: str | None = None

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix else ""
        return f"[{self.level}] {self.subject}: {self.text}{fix}"


def blocks_run(findings: list[Finding]) -> bool:
    return any(f.level == "error" for f in findings)


def run_checks(config: Config, environ: Mapping[str, str] | None = None) -> Iterator[Finding]:
    """Every check, in the order the lines are printed (a generator: each line shows as soon as it is known)."""
    env = os.environ if environ is None else environ
    yield check_python()
    if config.workers.mode == "redis":
        # The bot loads no model in redis mode: no GPU here; the workers check theirs (`animebot worker`).
        yield from check_redis(config, env)
    else:
        budget = yield from check_torch(config)
        for spec in config.models.values():
            yield from check_model(config, spec, budget)
    yield from check_token(config, env)
    yield from check_data_dir(config)
    yield from check_database(config.database)
    yield check_tags(config)


# -- Python and torch -------------------------------------------------------------------------------------


def check_python(version: tuple[int, int, int] | None = None) -> Finding:
    found = version or (sys.version_info.major, sys.version_info.minor, sys.version_info.micro)
    text = f"{'.'.join(map(str, found))} ({platform.python_implementation()}, {sys.executable})"
    if found[:2] < MIN_PYTHON:
        return Finding("error", "python", text, f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return Finding("ok", "python", text)


class _NoDevice:
    """The budget of a device that could not be resolved (the models are then shown without a mode)."""


Budget = int | None | type[_NoDevice]


def check_torch(config: Config) -> Generator[Finding, None, Budget]:
    """torch, the device `run` would use and its usable memory. Returns the device budget (bytes; None: no
    limit known) or _NoDevice when the configured device cannot be used."""
    try:
        import torch
    except ImportError as e:
        yield Finding("error", "torch", f"cannot be imported ({e})", f"install torch: {_TORCH_HELP}")
        return _NoDevice
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    yield Finding("ok", "torch", f"{torch.__version__} ({build})")

    from inference.device import device_budget, make_runtime

    inf = config.inference
    try:
        runtime = make_runtime(inf.device, inf.dtype, config.cache_dir, inf.local_files_only, config.vram_limit)
    except ValueError as e:
        change = f'set [inference] device = "auto" (or "cpu"), or install a torch build for your GPU: {_TORCH_HELP}'
        yield Finding("error", "device", str(e), change)
        return _NoDevice
    device = runtime.device
    budget = device_budget(runtime)
    limit = f", capped by vram_limit_gb = {inf.vram_limit_gb:g}" if config.vram_limit is not None else ""
    if device.startswith("cuda"):
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        usable = "no limit" if budget is None else _gib(budget)
        yield Finding(
            "ok", "device", f"{device} ({name}): {_gib(free)} free of {_gib(total)}; usable {usable}{limit}"
        )
    elif device == "mps":
        yield Finding("ok", "device", f"mps (Apple GPU): shares the system memory{limit}")
    else:
        fix: str | None = None
        if inf.device == "auto":
            fix = f"for real models, install a CUDA torch build and an NVIDIA driver ({_TORCH_HELP})"
        yield Finding("warn" if fix else "ok", "device", "cpu: no GPU in use; real models take minutes an image", fix)
    return budget


# -- the Redis worker pool ([workers] mode = "redis") --------------------------------------------------------

REDIS_TIMEOUT = 5.0  # seconds to connect and for each command
_REDIS_INSTALL = "start redis-server (Debian: `sudo apt-get install redis-server`; docs/scaling.md)"


def check_redis(config: Config, env: Mapping[str, str]) -> Iterator[Finding]:
    """Redis answers PING with the configured URL and password (which is never printed), whether it keeps an
    append-only file, and the workers whose heartbeat is alive."""
    workers = config.workers
    shown = workers.display_url
    password = workers.password(env)
    yield Finding("info", "workers", 'mode "redis": the jobs run on `animebot worker` processes; no GPU needed here')
    client = redis.Redis.from_url(
        workers.url, password=password, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    )
    try:
        try:
            client.ping()
        except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as e:
            # NOAUTH (a password is needed), WRONGPASS (a wrong one), or an ACL user without PING.
            text = _scrub(str(e), password)
            fix = "set the password in REDIS_PASSWORD (or in [workers] url: redis://:PASSWORD@host:6379/0)"
            yield Finding("error", "redis", f"{shown}: refused: {text}", fix)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            text = _scrub(str(e), password)
            fix = f"{_REDIS_INSTALL}, or correct [workers] url"
            yield Finding("error", "redis", f"{shown}: does not answer ({text})", fix)
            return
        yield Finding("ok", "redis", f"{shown}: answers PING")
        yield from _redis_persistence(client)
        keys = Keys(workers.prefix)
        try:
            members: set[bytes] = client.smembers(keys.workers)  # type: ignore[assignment]
            ids = sorted(i for i in (m.decode("utf-8", "replace") for m in members) if _ID.fullmatch(i))
            beats: list[bytes | None] = client.mget([keys.worker(i) for i in ids]) if ids else []  # type: ignore[assignment]
        except redis.exceptions.RedisError as e:
            yield Finding("warn", "workers", f"cannot read the heartbeats: {_scrub(str(e), password)}")
            return
        alive = 0
        for worker_id, raw in zip(ids, beats, strict=True):
            if raw is None:  # expired: stopped or dead
                continue
            try:
                beat = Heartbeat.from_bytes(raw)
            except ProtocolError as e:
                yield Finding("warn", f"worker {worker_id}", f"unreadable heartbeat ({e})")
                continue
            alive += 1
            yield Finding("ok", f"worker {worker_id}", _describe_worker(beat))
        if not alive:
            fix = "start one: `animebot worker --config FILE --device cuda:0` (docs/scaling.md)"
            yield Finding("warn", "workers", "no worker online: jobs wait in the queue until one connects", fix)
    finally:
        client.close()


def _redis_persistence(client: redis.Redis) -> Iterator[Finding]:
    try:
        info = client.info("persistence")
    except redis.exceptions.RedisError:  # an ACL user without INFO: not ours to judge
        return
    if str(info.get("aof_enabled", "0")) != "1":
        yield Finding(
            "warn",
            "redis",
            "no append-only file: a Redis restart loses the jobs handed to workers and their unread results",
            "`appendonly yes` in redis.conf (or CONFIG SET appendonly yes)",
        )


def _describe_worker(beat: Heartbeat) -> str:
    where = f"{beat.device or '?'} on {beat.host or '?'} (pid {beat.pid})"
    budget = "" if beat.budget is None else f", {_gib(beat.budget)} usable"
    held = ", ".join(beat.loaded) or "nothing"
    busy = f"; running job {', '.join(f'#{j}' for j in beat.busy)}" if beat.busy else "; idle"
    return f"{where}{budget}; serves {', '.join(beat.models) or 'nothing'}; holds {held}{busy}"


def _scrub(text: str, password: str | None) -> str:
    """An error text with the password (if some library put it there) masked."""
    return text.replace(password, "***") if password else text


# -- models -----------------------------------------------------------------------------------------------


def check_model(config: Config, spec: ModelSpec, budget: Budget) -> Iterator[Finding]:
    """The model's files (or hub access) and the memory mode it would run in. A problem with the default
    model blocks `run` (every request without a model would fail); with another model it is a warning."""
    subject = f"model {spec.name}"
    problem: Level = "error" if spec.name == config.inference.default_model else "warn"
    yield from _source_findings(config, spec, subject, problem)
    if spec.vae is not None:
        yield from _vae_findings(config, spec.vae, f"{subject} vae", problem)
    if budget is not _NoDevice:
        assert budget is None or isinstance(budget, int)
        yield _memory_finding(spec, budget, subject)


def _source_findings(config: Config, spec: ModelSpec, subject: str, problem: Level) -> Iterator[Finding]:
    source = spec.source
    section = f"[models.{spec.name}]"
    if isinstance(source, BuiltinSource):
        built = any((config.cache_dir / source.name / n).is_file() for n in _INDEX_FILES)
        where = config.cache_dir / source.name
        yield Finding("ok", subject, f"built-in tiny model ({'built' if built else 'built on first use'}: {where})")
    elif isinstance(source, DirSource):
        if any((source.path / n).is_file() for n in _INDEX_FILES):
            yield Finding("ok", subject, f"diffusers folder {source.path}")
        else:
            what = "has no model_index.json" if source.path.is_dir() else "does not exist"
            fix = f"correct `path` in {section}, or download the model there (`hf download ORG/NAME --local-dir DIR`)"
            yield Finding(problem, subject, f"diffusers folder {source.path} {what}", fix)
    elif isinstance(source, SingleFileSource):
        if source.path.is_file():
            yield Finding("ok", subject, f"checkpoint {source.path} ({_gib(source.path.stat().st_size)})")
        else:
            fix = f"put the .safetensors checkpoint there, or correct `file` in {section}"
            yield Finding(problem, subject, f"checkpoint {source.path} not found", fix)
        if source.config is not None:
            yield from _config_findings(config, source.config, subject, problem)
    elif isinstance(source, ComfyUISource):
        files = {"diffusion_model": source.diffusion_model, "text_encoder": source.text_encoder, "vae": source.vae}
        missing = [f"{key} {path}" for key, path in files.items() if not path.is_file()]
        if missing:
            fix = f"check `comfyui` root and file names in {section} (<root>/models/<kind>/<file>)"
            yield Finding(problem, subject, f"missing ComfyUI file(s): {'; '.join(missing)}", fix)
        else:
            yield Finding("ok", subject, f"ComfyUI files in {source.diffusion_model.parent.parent}")
        if source.config is not None:
            yield from _config_findings(config, source.config, subject, problem)
    elif isinstance(source, HubSource):
        yield _hub_finding(config, source.repo_id, source.revision, _INDEX_FILES, subject, problem)
    else:
        raise TypeError(f"unknown source {source!r}")


def _config_findings(config: Config, value: str, subject: str, problem: Level) -> Iterator[Finding]:
    """The `config` of a single file or ComfyUI model: a local diffusers folder or a hub id."""
    path = Path(value)
    if path.is_absolute():
        if path.is_dir():
            yield Finding("ok", f"{subject} config", f"folder {path}")
        else:
            yield Finding(problem, f"{subject} config", f"folder {path} not found", "correct `config` in the config")
    else:
        yield _hub_finding(config, value, None, (*_INDEX_FILES, "config.json"), f"{subject} config", problem)


def _vae_findings(config: Config, vae: VaeSource, subject: str, problem: Level) -> Iterator[Finding]:
    if isinstance(vae, HubSource):
        yield _hub_finding(config, vae.repo_id, vae.revision, ("config.json",), subject, problem)
    elif isinstance(vae, DirSource | VaeFileSource):
        found = vae.path.is_dir() if isinstance(vae, DirSource) else vae.path.is_file()
        if found:
            yield Finding("ok", subject, str(vae.path))
        else:
            yield Finding(problem, subject, f"{vae.path} not found", "correct `vae` in the model's section")


HubProbe = Callable[[str, str | None], None]


def _hub_probe(repo_id: str, revision: str | None) -> None:
    """Ask the hub for the repository's metadata (no file is downloaded); raises what huggingface_hub raises."""
    from huggingface_hub import HfApi

    HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT)


def _hub_finding(
    config: Config,
    repo_id: str,
    revision: str | None,
    files: tuple[str, ...],
    subject: str,
    problem: Level,
    probe: HubProbe = _hub_probe,
) -> Finding:
    from huggingface_hub import try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str) for name in files):
        return Finding("ok", subject, f"hub {repo_id}: in the local Hugging Face cache")
    download = f"download it while online (`hf download {repo_id}`)"
    if config.inference.local_files_only:
        fix = f"{download}, or set [inference] local_files_only = false"
        return Finding(problem, subject, f"hub {repo_id}: not in the local cache, and local_files_only is on", fix)
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        probe(repo_id, revision)
    except GatedRepoError:
        fix = f"accept its licence on https://huggingface.co/{repo_id} and log in (`hf auth login`)"
        return Finding(problem, subject, f"hub {repo_id}: gated, this machine has no access", fix)
    except RepositoryNotFoundError:
        fix = "correct the repository id (org/name) in the config, or log in if it is private (`hf auth login`)"
        return Finding(problem, subject, f"hub {repo_id}: no such repository (or private)", fix)
    except OfflineModeIsEnabled:
        return Finding("warn", subject, f"hub {repo_id}: not in the local cache, and HF_HUB_OFFLINE is set",
                       f"unset HF_HUB_OFFLINE, or {download}")
    except Exception as e:  # no network, DNS, a proxy, a timeout, a revision that does not exist
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Finding("warn", subject, f"hub {repo_id}: not in the local cache and the hub cannot be reached "
                       f"({reason})", f"check the network (or HF_ENDPOINT), or {download}")
    return Finding("ok", subject, f"hub {repo_id}: reachable; downloaded on first use")


def _memory_finding(spec: ModelSpec, budget: int | None, subject: str) -> Finding:
    from bot.core.memory_info import memory_status
    from inference.memory import MODE_FEATURES, fitting_mode, reference_footprint

    footprint = reference_footprint(spec)
    status = memory_status(spec, budget, footprint)
    mode = f"auto -> {status.mode}" if spec.memory == "auto" else f"{status.mode} (set in the config)"
    text = f"memory mode {mode}: {', '.join(MODE_FEATURES[status.mode])}"
    edge = footprint.typical_px
    if budget is not None and fitting_mode(budget, footprint, edge, edge, 1) is None:
        fix = "free GPU memory (close other programs), raise vram_limit_gb, or use a smaller model"
        return Finding("warn", subject, f"{text}; a {edge}x{edge} image does not fit in {_gib(budget)} in any mode, "
                       "so its jobs are refused", fix)
    return Finding("ok", subject, text)


# -- the Discord token ------------------------------------------------------------------------------------


def token_problem(token: str) -> str | None:
    """Why `token` cannot be a bot token (None: it has the right shape). Never says the token itself."""
    if token != token.strip() or token.startswith(("'", '"')):
        return "it has spaces or quotes around it"
    if token.lower().startswith("bot "):
        return 'it starts with "Bot ": give the token alone'
    parts = token.split(".")
    if len(parts) != 3 or not all(_BASE64URL.fullmatch(p) for p in parts):
        if len(parts) == 1 and _BASE64URL.fullmatch(token) and len(token) == 32:
            return "it looks like the OAuth2 client secret, not the bot token"
        return "it is not three base64url parts separated by dots"
    user_id = bot_user_id(token)
    if user_id is None:
        return "its first part is not a bot's user id"
    return None


def bot_user_id(token: str) -> int | None:
    """The user id a well-formed token's first part encodes (not a secret: it is the bot's public id)."""
    first = token.split(".")[0]
    try:
        text = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdecimal() and len(text) <= 20 else None


def check_token(config: Config, env: Mapping[str, str]) -> Iterator[Finding]:
    if env.get("DISCORD_TOKEN"):
        token, where = env["DISCORD_TOKEN"], "DISCORD_TOKEN (environment)"
    elif config.discord.token:
        token, where = config.discord.token, f"[discord] token in {config.source or 'the config'}"
    else:
        fix = "Discord developer portal -> your application -> Bot -> Reset Token; then `export DISCORD_TOKEN=...`"
        yield Finding("error", "discord token", "none set (DISCORD_TOKEN or [discord] token)", fix)
        return
    problem = token_problem(token)
    if problem is not None:
        fix = f"copy the token again (developer portal -> Bot -> Reset Token) into {where}"
        yield Finding("error", "discord token", f"from {where}: malformed: {problem}", fix)
        return
    yield Finding("ok", "discord token", f"from {where}: well-formed (bot user id {bot_user_id(token)})")
    if where.startswith("[discord]") and config.source is not None:
        yield from _config_permissions(config.source)


def _config_permissions(path: Path) -> Iterator[Finding]:
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        fix = f"`chmod 600 {path}`, or move the token to the DISCORD_TOKEN environment variable"
        yield Finding("warn", "discord token", f"{path} (which holds the token) is readable by other users", fix)


# -- data directory, database, tags -----------------------------------------------------------------------


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_data_dir(config: Config) -> Iterator[Finding]:
    path = config.data_dir
    subject = "data dir"
    try:
        exists = path.exists()
        if exists and not path.is_dir():
            yield Finding("error", subject, f"{path} is not a folder", "set data_dir to a folder in the config")
            return
        where = _existing_parent(path)
        if not os.access(where, os.W_OK | os.X_OK):
            fix = "give the bot's user write access (`chown`/`chmod`), or set data_dir to a writable folder"
            yield Finding("error", subject, f"{where} is not writable", fix)
            return
        usage = shutil.disk_usage(where)
    except OSError as e:
        yield Finding("error", subject, f"{path}: {e.strerror or e}", "set data_dir to a usable folder")
        return
    state = path if exists else f"{path} (created at first start)"
    text = f"{state}: {_gib(usage.free)} free of {_gib(usage.total)}"
    if usage.free < DISK_ERROR_BYTES:
        yield Finding("error", subject, text, "free disk space (old images are in data_dir/images)")
    elif usage.free < DISK_WARN_BYTES:
        yield Finding("warn", subject, text, "free disk space: a real model needs 6-7 GB, and images add up")
    else:
        yield Finding("ok", subject, text)


def _lock_holder(database: Path) -> int | None:
    """The pid written in the lock file by the process that holds it (the file is emptied at release)."""
    try:
        text = lock_path(database).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    if not text.isdecimal():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # PermissionError: alive, another user's
        pass
    return pid


def _backups(database: Path) -> list[Path]:
    return sorted(database.parent.glob(f"{database.name}.v*.bak"))


def check_database(database: Path) -> Iterator[Finding]:
    """PRAGMA quick_check and the schema version, read-only: with the bot running (its -wal file exists) a
    plain read-only connection, which sees a consistent snapshot; else `immutable`, so not even the -wal and
    -shm files are created."""
    subject = "database"
    if not database.exists():
        yield Finding("ok", subject, f"{database}: none yet (created at first start)")
        return
    if not database.is_file():
        yield Finding("error", subject, f"{database} is not a file", "move it away, or set another data_dir")
        return
    holder = _lock_holder(database)
    if holder is not None:
        yield Finding("info", subject, f"in use by a running bot (pid {holder}): a second `run` on it would refuse")
    running = Path(f"{database}-wal").exists()
    uri = f"{database.resolve().as_uri()}?mode=ro" + ("" if running else "&immutable=1")
    backups = _backups(database)
    restore = f"restore a backup (e.g. {backups[-1].name})" if backups else "restore it from your backup"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check")]
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_NOTADB:
            fix = f"move it away (`run` then starts an empty one) or {restore}"
            yield Finding("error", subject, f"{database} is not an SQLite database", fix)
        elif code == sqlite3.SQLITE_CORRUPT:
            fix = f"{restore}, or `sqlite3 {database} .recover`"
            yield Finding("error", subject, f"{database} is damaged ({e})", fix)
        elif code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            yield Finding("warn", subject, f"{database} is locked by another program", "try again in a moment")
        else:
            yield Finding("error", subject, f"{database} cannot be read ({e})", "check its permissions, or restore it")
        return
    if problems != ["ok"]:
        details = [line for p in problems for line in p.splitlines() if line and not line.startswith("***")]
        more = f" (+{len(details) - 1} more)" if len(details) > 1 else ""
        text = f"{database} is damaged: {(details or problems)[0]}{more}"
        yield Finding("error", subject, text, f"{restore}, or `sqlite3 {database} .recover`")
    elif version > SCHEMA_VERSION:
        fix = "upgrade animebot (or start from a backup taken before the upgrade)"
        yield Finding("error", subject, f"schema version {version} is newer than this bot's {SCHEMA_VERSION}", fix)
    elif version < SCHEMA_VERSION:
        yield Finding("info", subject, f"healthy; schema version {version} is migrated to {SCHEMA_VERSION} at the "
                      f"next start (a backup is taken first)")
    else:
        yield Finding("ok", subject, f"{database}: healthy (quick_check ok), schema version {version} (current)")


def check_tags(config: Config) -> Finding:
    from bot.prompts.tags import TagDatabaseBusy, TagImportError
    from bot.prompts.tags.db import load

    path = config.tags_db
    if not path.is_file():
        fix = "import a tag list: `animebot tags import FILE` (a1111 tag-autocomplete CSV)"
        return Finding("warn", "tag database", f"none at {path}: autocomplete is empty, tags keep the typed order", fix)
    try:
        tags, _meta = load(path)
    except TagDatabaseBusy as e:
        return Finding("warn", "tag database", str(e), "try again when the import has finished")
    except TagImportError as e:  # `run` refuses to start with it
        return Finding("error", "tag database", str(e), "re-import it: `animebot tags import FILE`")
    if not tags:
        fix = "import a tag list: `animebot tags import FILE`"
        return Finding("warn", "tag database", f"{path} holds no tags", fix)
    return Finding("ok", "tag database", f"{path}: {len(tags):,} tags")


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
