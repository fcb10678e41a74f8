"""The TOML config file, validated once at start into typed settings."""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.core.folders import make_folder
from bot.prompts.dialects import DialectError, available_dialects, load_dialect
from bot.validation import format_errors
from inference.specs import (
    BUILTIN_MODELS,
    BuiltinSource,
    ComfyUISource,
    DirSource,
    HubSource,
    MemorySetting,
    ModelSource,
    ModelSpec,
    SingleFileSource,
    VaeFileSource,
    VaeSource,
)
from inference.tagger import (
    DEFAULT_CHARACTER_THRESHOLD,
    DEFAULT_GENERAL_THRESHOLD,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL,
    TaggerOptions,
)

# The dialect a model gets when its config names none (the built-ins too).
DEFAULT_DIALECTS = {"sdxl": "animagine-xl-4.0", "anima": "anima"}
TINY_SIZE_SCALE = 0.125
# Upper bounds that keep every setting a number SQLite and the clock can hold.
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600
MAX_COUNT_SETTING = 1_000_000
GIB = 1024**3
MAX_VRAM_LIMIT_GB = 4096  # a cap no card reaches, so the bytes stay a plain integer
# The file types a `vae` may name (anything else is a hub id or a folder).
VAE_FILE_SUFFIXES = (".safetensors",)
MAX_SHARDS = 100_000
REDIS_SCHEMES = ("redis", "rediss")
MAX_LORAS_PER_JOB = 4  # inference.lora_adapters.DEFAULT_CAPACITY: the adapters a pipeline keeps loaded
# A Discord id (snowflake): an unsigned 64-bit number.
DiscordId = Annotated[int, Field(ge=0, lt=2**64)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    return value


# A file or folder name from the config: no NUL (the OS refuses it with an exception, not an error code).
PathText = Annotated[str, AfterValidator(_no_nul)]


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComfyUIFiles(_Section):
    """The three files of Anima in a ComfyUI install: `root`/models/<kind>/<file>."""

    root: PathText = "."
    diffusion_model: PathText = "anima-preview.safetensors"
    text_encoder: PathText = "qwen_3_06b_base.safetensors"
    vae: PathText = "qwen_image_vae.safetensors"


class ModelSettings(_Section):
    family: Literal["sdxl", "anima"] | None = None
    dialect: str | None = None
    hub: str | None = None
    path: PathText | None = None
    file: PathText | None = None
    comfyui: ComfyUIFiles | None = None
    builtin: str | None = None
    config: PathText | None = None
    revision: str | None = None
    variant: str | None = None
    size_scale: float = Field(default=1.0, gt=0, le=4, allow_inf_nan=False)
    memory: MemorySetting | None = None  # None: [inference] memory
    vae: PathText | None = None  # a hub id (org/name), a local diffusers folder or a .safetensors file
    compile: StrictBool | None = None  # None: [inference] compile

    @model_validator(mode="after")
    def _one_source(self) -> ModelSettings:
        given = [k for k in ("hub", "path", "file", "comfyui", "builtin") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one source: hub, path, file, comfyui or builtin")
        if self.builtin is not None and self.builtin not in BUILTIN_MODELS:
            raise ValueError(f"builtin must be one of {', '.join(BUILTIN_MODELS)}")
        if self.builtin is None and self.family is None:
            raise ValueError("family is required (sdxl or anima)")
        if self.file is not None and self.family == "anima":
            raise ValueError("Anima has no single-file format: use comfyui, path or hub")
        if self.comfyui is not None and self.family != "anima":
            raise ValueError("comfyui files are for family = 'anima'")
        if self.dialect is not None and self.dialect not in available_dialects():
            raise ValueError(f"dialect must be one of {', '.join(available_dialects())}")
        return self


class InferenceSettings(_Section):
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    default_model: str = "tiny-sdxl"
    cache_size: int = Field(default=2, ge=1, le=8)
    cache_location: Literal["cpu", "device"] = "cpu"
    local_files_only: bool = False
    memory: MemorySetting = "auto"
    vram_limit_gb: float = Field(default=0.0, ge=0, le=MAX_VRAM_LIMIT_GB, allow_inf_nan=False, strict=True)
    compile: StrictBool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cuda", "mps", "cpu") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("device must be auto, cuda, cuda:N, mps or cpu")


class TagSettings(_Section):
    database: PathText = "tags.sqlite"
    # On a start with no tag database, import the default set shipped in data/tags/ (autocomplete at once).
    import_default: StrictBool = True
    # Where `animebot tags update` downloads the full list from (https; a tag-autocomplete danbooru.csv).
    update_url: str = "https://raw.githubusercontent.com/DominikDoom/a1111-sd-webui-tagcomplete/main/tags/danbooru.csv"


class LoraSettings(_Section):
    """[loras]: the LoRA library (inference/loras.py, docs/loras.md)."""

    # The folder of .safetensors LoRA files (and optional <stem>.toml sidecars), relative to data_dir; read at start
    # and by /lora reload. A missing folder is an empty library.
    directory: PathText = "loras"
    max_per_job: int = Field(default=3, ge=0, le=MAX_LORAS_PER_JOB)  # 0: no LoRA can be asked for
    max_weight: float = Field(default=2.0, gt=0, le=10, allow_inf_nan=False)  # weights from -max to +max


class QuotaSettings(_Section):
    images_per_day: int = Field(default=100, ge=0, le=MAX_COUNT_SETTING)  # 0: unlimited
    max_queued_jobs: int = Field(default=3, ge=0, le=MAX_COUNT_SETTING)  # 0: unlimited
    cooldown_seconds: float = Field(default=0.0, ge=0, le=MAX_COOLDOWN_SECONDS, allow_inf_nan=False)


class DiscordSettings(_Section):
    token: str | None = None  # DISCORD_TOKEN in the environment wins
    # "auto": discord.py's AutoShardedBot, as many shards as Discord recommends; N > 0: N shards; 0: one
    # connection (a plain Bot), as for a bot in fewer than a couple of thousand servers.
    shards: Literal["auto"] | int = 0

    @field_validator("shards", mode="before")
    @classmethod
    def _shards(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 0 <= value <= MAX_SHARDS):
            return value
        raise ValueError(f'must be "auto" or a number of shards from 0 (one connection) to {MAX_SHARDS}')
    guild_ids: list[DiscordId] = []  # sync commands to these guilds (instant) instead of globally
    admin_user_ids: list[DiscordId] = []
    admin_role_ids: list[DiscordId] = []
    reroll_by_anyone: bool = False
    banned_words: list[str] = []
    spoiler_sensitive: bool = False


class TaggerSettings(_Section):
    """[tagger]: the image tagger (/describe, `animebot describe`)."""

    model: PathText = DEFAULT_MODEL  # a hub id (org/name), a local folder or a model.onnx file
    revision: str | None = None
    general_threshold: float = Field(default=DEFAULT_GENERAL_THRESHOLD, gt=0, le=1, allow_inf_nan=False)
    character_threshold: float = Field(default=DEFAULT_CHARACTER_THRESHOLD, gt=0, le=1, allow_inf_nan=False)
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(default=0, ge=0, le=256)  # onnxruntime's threads; 0: its default
    max_upload_mb: float = Field(default=DEFAULT_MAX_BYTES / 2**20, gt=0, le=100, allow_inf_nan=False)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1, le=200_000_000)
class SafetySettings(_Section):
    """[safety]: the rating check of results before they are posted (bot/discord_app/screening.py)."""

    rate_results: bool = True  # rate every result with the tagger; off: post everything unrated
    # In channels that are not age-restricted: a result rated sensitive is spoilered, withheld or posted.
    sensitive: Literal["spoiler", "withhold", "post"] = "spoiler"
    # Whether a server's admins (/safety set) may make the check looser than this: turn it off, or post
    # `sensitive` results more openly. Off: a server may only be stricter (bot/core/safety_settings.py).
    servers_may_loosen: bool = False


class WorkersSettings(_Section):
    """[workers]: who runs the jobs. "local": one GPU worker inside the bot process (the default). "redis": any
    number of `animebot worker` processes, on this host or others, through the Redis server at `url`
    (docs/scaling.md). The password goes in the URL (redis://:PASSWORD@host) or in REDIS_PASSWORD."""

    mode: Literal["local", "redis"] = "local"
    url: str = "redis://127.0.0.1:6379/0"  # redis:// or rediss:// (TLS)
    visibility_timeout: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)
    heartbeat_interval: float | None = Field(default=None, gt=0, le=86_400, allow_inf_nan=False)
    max_result_mb: float = Field(default=64, gt=0, le=1024, allow_inf_nan=False)
    prefix: str = "animebot"

    @model_validator(mode="before")
    @classmethod
    def _check_url(cls, data: Any) -> Any:
        # Here, not in a field validator: an error must never echo the URL, which may hold the password.
        if isinstance(data, dict) and "url" in data:
            url = data["url"]
            if not isinstance(url, str):
                raise ValueError("url: must be a string such as redis://127.0.0.1:6379/0")
            problem = redis_url_problem(url)
            if problem is not None:
                raise ValueError(f"url: {problem}")
        return data

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        from bot.core.pool.protocol import ProtocolError, check_id

        try:
            return check_id(value, "key prefix")
        except ProtocolError:
            raise ValueError("must be 1 to 100 letters, digits or ._:@- (it becomes part of every key name)") from None

    @model_validator(mode="after")
    def _heartbeat(self) -> WorkersSettings:
        if self.heartbeat_interval is not None and self.heartbeat_interval >= self.visibility_timeout:
            raise ValueError(
                "heartbeat_interval must be shorter than visibility_timeout (a worker would expire between beats)"
            )
        return self

    @property
    def heartbeat(self) -> float:
        """Seconds between two heartbeats of a worker: heartbeat_interval, else a quarter of the timeout."""
        return self.heartbeat_interval if self.heartbeat_interval is not None else self.visibility_timeout / 4

    @property
    def max_result_bytes(self) -> int:
        return int(self.max_result_mb * 1024 * 1024)

    def with_url(self, url: str | None) -> WorkersSettings:
        """These settings with another Redis URL (`animebot worker --redis-url`; None: unchanged). ValueError
        (one line, the password masked) for a URL that is not redis:// or rediss:// with a host."""
        if url is None:
            return self
        from bot.core.pool.connection import check_url

        return self.model_copy(update={"url": check_url(url)})

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The password: the URL's, else REDIS_PASSWORD's (None: no password)."""
        env = os.environ if environ is None else environ
        return urlsplit(self.url).password or env.get("REDIS_PASSWORD") or None

    @property
    def display_url(self) -> str:
        """The URL for logs and messages: a password in it is masked."""
        return mask_url(self.url)


def redis_url_problem(url: str) -> str | None:
    """Why `url` is not a Redis URL the pool can use (None: it is). Never quotes the password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError:
        return "not a valid URL (expected redis://HOST:PORT/DB or rediss://...)"
    if parts.scheme not in REDIS_SCHEMES:
        scheme = repr(parts.scheme) if parts.scheme else "none"
        return f"must start with redis:// or rediss:// (TLS), not scheme {scheme}"[:200]
    if not parts.hostname:
        return "names no host (expected redis://HOST:PORT/DB)"
    return None


def mask_url(url: str) -> str:
    """`url` with its password (if any) replaced by ***."""
    from bot.core.pool.connection import describe_url

    return describe_url(url)


class MetricsSettings(_Section):
    """The Prometheus endpoint (bot/metrics.py): off unless a port is given."""

    port: int = Field(default=0, ge=0, le=65535, strict=True)  # 0: no endpoint
    host: str = "127.0.0.1"  # "0.0.0.0" to let another machine scrape it


class Settings(_Section):
    data_dir: PathText = "var"
    inference: InferenceSettings = InferenceSettings()
    tags: TagSettings = TagSettings()
    loras: LoraSettings = LoraSettings()
    quotas: QuotaSettings = QuotaSettings()
    discord: DiscordSettings = DiscordSettings()
    models: dict[str, ModelSettings] = {}
    tagger: TaggerSettings = TaggerSettings()
    safety: SafetySettings = SafetySettings()
    metrics: MetricsSettings = MetricsSettings()
    workers: WorkersSettings = WorkersSettings()


class Config:
    """Validated settings with every path resolved and every model turned into a ModelSpec."""

    def __init__(self, settings: Settings, base_dir: Path, source: Path | None) -> None:
        self.settings = settings
        self.source = source
        self.data_dir = _resolve(base_dir, settings.data_dir)
        self.inference = settings.inference
        self.tags_db = _resolve(self.data_dir, settings.tags.database)
        self.loras = settings.loras
        self.loras_dir = _resolve(self.data_dir, settings.loras.directory)
        self.lora_hash_cache = self.data_dir / "lora-hashes.json"  # SHA-256s by (path, size, mtime)
        self.database = self.data_dir / "animebot.sqlite"
        self.quotas = settings.quotas
        self.discord = settings.discord
        self.metrics = settings.metrics
        self.workers = settings.workers
        self.models = _model_specs(settings.models, base_dir, settings.inference, source)
        self.tagger = settings.tagger
        self.safety = settings.safety
        self.tagger_options = _tagger_options(settings.tagger, base_dir, settings.inference.local_files_only)
        _check_tags_db_is_its_own_file(self.tags_db, self.database, source)
        if self.inference.default_model not in self.models:
            raise ConfigError(
                f"{source or 'config'}: inference.default_model: no model named "
                f"{self.inference.default_model!r} (have: {', '.join(self.models)})"
            )

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def vram_limit(self) -> int | None:
        """[inference] vram_limit_gb in bytes; None when it is 0 (no limit)."""
        limit = self.inference.vram_limit_gb
        return int(limit * GIB) if limit > 0 else None

    @property
    def default_model(self) -> ModelSpec:
        return self.models[self.inference.default_model]

    def ensure_data_dir(self) -> None:
        """Create `data_dir` if needed and check that files can be written there (ConfigError if not)."""
        where = f"{self.source or 'config'}: data_dir"
        path = self.data_dir
        problem = make_folder(path)
        if problem is not None:
            raise ConfigError(f"{where}: {problem}")
        try:
            with tempfile.TemporaryFile(dir=path, prefix=".animebot-write-check-"):
                pass
        except OSError as e:
            raise ConfigError(f"{where}: cannot write in {path}: {e.strerror or e}") from None


def _check_tags_db_is_its_own_file(tags_db: Path, database: Path, source: Path | None) -> None:
    """The tag database is replaced wholesale on import: it must never be the main database (or one of
    its journal files), however the path is spelled (relative, `..`, a symlink, a hard link)."""
    main = os.path.realpath(database)
    tags = os.path.realpath(tags_db)
    same = tags in {main, *(main + suffix for suffix in ("-wal", "-shm", "-journal"))}
    if not same:
        with contextlib.suppress(OSError):  # missing, or a name the OS cannot stat (too long): not the same
            same = os.path.samefile(tags_db, database)
    if same:
        raise ConfigError(
            f"{source or 'config'}: tags.database: {tags_db} is the bot's main database ({database}); "
            'the tag database needs a file of its own, e.g. database = "tags.sqlite"'
        )


def _tagger_options(tagger: TaggerSettings, base: Path, local_files_only: bool) -> TaggerOptions:
    """[tagger] as the tagger's options: `model` is a path (relative to the config's folder) when one is
    there or it does not look like a hub id (org/name), else a hub id."""
    path = _resolve(base, tagger.model)
    try:
        on_disk = path.exists()
    except OSError:  # a name the OS cannot look up (too long): not a folder of ours
        on_disk = False
    source = str(path) if on_disk or not _looks_like_hub_id(tagger.model) else tagger.model
    return TaggerOptions(
        source=source,
        revision=tagger.revision,
        general_threshold=tagger.general_threshold,
        character_threshold=tagger.character_threshold,
        device=tagger.device,
        local_files_only=local_files_only,
        threads=tagger.threads,
    )


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _model_specs(
    configured: dict[str, ModelSettings], base: Path, inference: InferenceSettings, config_file: Path | None
) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {
        name: ModelSpec(
            name,
            family,
            DEFAULT_DIALECTS[family],
            BuiltinSource(name),
            TINY_SIZE_SCALE,
            memory=inference.memory,
            compile=inference.compile,
        )
        for name, family in BUILTIN_MODELS.items()
    }
    for name, m in configured.items():
        source: ModelSource
        if m.builtin is not None:
            source = BuiltinSource(m.builtin)
            family = BUILTIN_MODELS[m.builtin]
            scale = m.size_scale if "size_scale" in m.model_fields_set else TINY_SIZE_SCALE
        else:
            assert m.family is not None
            family = m.family
            scale = m.size_scale
            config = m.config
            if config is not None and not _looks_like_hub_id(config):
                config = str(_resolve(base, config))
            if m.hub is not None:
                source = HubSource(m.hub, m.revision, m.variant)
            elif m.path is not None:
                source = DirSource(_resolve(base, m.path))
            elif m.file is not None:
                source = SingleFileSource(_resolve(base, m.file), config)
            else:
                assert m.comfyui is not None
                root = _resolve(base, m.comfyui.root) / "models"
                source = ComfyUISource(
                    diffusion_model=_resolve(root / "diffusion_models", m.comfyui.diffusion_model),
                    text_encoder=_resolve(root / "text_encoders", m.comfyui.text_encoder),
                    vae=_resolve(root / "vae", m.comfyui.vae),
                    config=config,
                )
        dialect = m.dialect or DEFAULT_DIALECTS[family]
        try:
            load_dialect(dialect)
        except DialectError as e:
            raise ConfigError(f"models.{name}.dialect: {e}") from e
        vae = None if m.vae is None else _vae_source(m.vae, base, f"{config_file or 'config'}: models.{name}.vae")
        specs[name] = ModelSpec(
            name,
            family,
            dialect,
            source,
            scale,
            memory=m.memory or inference.memory,
            vae=vae,
            compile=inference.compile if m.compile is None else m.compile,
        )
    return specs


def _vae_source(value: str, base: Path, where: str) -> VaeSource:
    """A `vae` key: a .safetensors file or a diffusers folder on disk (relative to the config's folder),
    else a hub id `org/name`. ConfigError for anything else (a missing file or folder)."""
    path = _resolve(base, value)
    is_file_name = value.lower().endswith(VAE_FILE_SUFFIXES)
    try:
        if path.is_file() and is_file_name:
            return VaeFileSource(path)
        if path.is_dir():
            return DirSource(path)
        exists = path.exists()
    except OSError as e:  # a name the OS cannot look up (too long)
        raise ConfigError(f"{where}: {path}: {e.strerror or e}") from None
    if not exists and not is_file_name and _looks_like_hub_id(value):
        return HubSource(value)
    if exists:
        problem = "not a .safetensors file nor a diffusers folder"
    elif is_file_name:
        problem = "no such file"
    else:
        problem = "no such folder, and not a hub id (org/name)"
    raise ConfigError(f"{where}: {problem}: {path}")


def _looks_like_hub_id(value: str) -> bool:
    """`org/name` with no path-like parts and nothing on disk by that name."""
    parts = value.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not value.startswith((".", "~"))
        and not Path(value).expanduser().exists()
    )


def parse_config(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> Config:
    where = str(source) if source else "config"
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, where)) from None
    return Config(settings, base_dir, source)


def load_config(path: Path | str | None) -> Config:
    """Read and validate a TOML config. None means the embedded defaults (tiny models, ./var)."""
    if path is None:
        return parse_config({}, Path.cwd())
    path = Path(path).expanduser()
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 (byte 0x{e.object[e.start]:02x})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    except ValueError:  # a NUL character in the path
        raise ConfigError(f"{path!r}: not a possible file name") from None
    return parse_config(raw, path.resolve().parent, path)
