"""The worker pool's wire format on Redis: every key, stream and message the bot and its workers exchange
(docs/scaling.md draws the picture). Pure data and validation: no Redis client here, no torch.

Every message is validated when it is read, whoever sent it: sizes are bounded, ids are checked before they
become parts of key names, PNG payloads must be PNGs. A message that does not validate raises ProtocolError;
the reader dead-letters it with a log line and goes on.

Streams and keys (P is the configured prefix, "animebot" by default, so two bots can share one Redis):
- `P:worker:{id}`  a worker's Heartbeat (JSON), expiring after the visibility timeout; `P:workers` the set of ids.
- `P:inbox:{id}`   the jobs handed to one worker (JobMessage), read by it through the consumer group "workers".
- `P:results`      every worker's results (ResultMessage + PNG bytes), read by the bot through the group "bot".
- `P:events`       started / progress / model loading (EventMessage), capped; read by the bot with XREAD.
- `P:dead`         dead letters: entries that did not validate, with the reason; capped.
- `P:control:{id}` a pub/sub channel of ControlMessage (cancel) for one worker.
- `P:cancel:{job}:{token}` set when a cancel is asked, so a worker that reads the job later skips it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.types import GenerationParams, HiresFix, LoraWeight, SourceImage

VERSION: Literal[1] = 1  # the protocol's version: a message of another version is refused (dead-lettered)

WORKER_GROUP = "workers"  # the consumer group of every inbox (the consumer is the worker's id)
BOT_GROUP = "bot"  # the consumer group of the results stream
BOT_CONSUMER = "bot"
REAPER_CONSUMER = "reaper"  # takes a dead worker's pending inbox entries (XAUTOCLAIM)

EVENTS_MAXLEN = 10_000  # approximate cap of the events stream (XADD MAXLEN ~)
DEAD_MAXLEN = 1_000  # approximate cap of the dead-letter stream
CANCEL_TTL = 86_400  # seconds a cancel key lives

MAX_JSON_BYTES = 256 * 1024  # one message's JSON part
MAX_IMAGES = 16  # images per job (the bot's own limit is lower)
MAX_PROMPT_CHARS = 20_000
MAX_ERROR_CHARS = 2_000
MAX_PARAMETERS_CHARS = 65_536  # one image's A1111 "parameters" text
DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024  # PNG bytes of one result ([workers] max_result_mb)
MAX_SOURCE_BYTES = 64 * 1024 * 1024  # the PNG an img2img / vary / upscale job starts from
MAX_LORAS = 16

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,100}$")  # worker ids and key prefixes: safe inside key names
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = r"^[0-9a-f]{64}$"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (malformed, too large, another version)."""


def check_id(value: str, what: str = "worker id") -> str:
    """`value` if it may be part of a key name (letters, digits, `._:@-`, at most 100), else ProtocolError."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProtocolError(f"invalid {what}: {value!r}"[:200])
    return value


@dataclass(frozen=True)
class Keys:
    """The key and stream names under one prefix."""

    prefix: str = "animebot"

    def __post_init__(self) -> None:
        check_id(self.prefix, "key prefix")

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{check_id(worker_id)}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def inbox(self, worker_id: str) -> str:
        return f"{self.prefix}:inbox:{check_id(worker_id)}"

    @property
    def results(self) -> str:
        return f"{self.prefix}:results"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def control(self, worker_id: str) -> str:
        return f"{self.prefix}:control:{check_id(worker_id)}"

    def cancel(self, job_id: int, token: str) -> str:
        return f"{self.prefix}:cancel:{int(job_id)}:{check_token(token)}"


def check_token(value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ProtocolError("invalid dispatch token")
    return value


def new_token() -> str:
    """A dispatch token: 128 random bits. Only the worker a job was handed to learns it, so only that worker
    can complete the job (the bot compares it with the one it stored at dispatch)."""
    import secrets

    return secrets.token_hex(16)


# -- messages ----------------------------------------------------------------------------------------------

WorkerId = Annotated[str, Field(pattern=_ID.pattern)]
Token = Annotated[str, Field(pattern=_TOKEN.pattern)]
JobId = Annotated[int, Field(gt=0, lt=2**63)]
ModelName = Annotated[str, Field(min_length=1, max_length=100)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    v: Literal[1] = VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Any:
        if raw is None:
            raise ProtocolError(f"{cls.__name__}: missing")
        if len(raw) > MAX_JSON_BYTES:
            raise ProtocolError(f"{cls.__name__}: {len(raw)} bytes, more than {MAX_JSON_BYTES}")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:
            raise ProtocolError(f"{cls.__name__}: {_first_error(e)}") from None


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}"[:300]


class _Part(BaseModel):
    """A part of a message (no version of its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


Sha256 = Annotated[str, Field(pattern=_SHA256)]
Strength = Annotated[float, Field(gt=0, le=1)]


class WireLora(_Part):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    sha256: Sha256  # how the worker finds its own copy of the file
    weight: Annotated[float, Field(ge=-10, le=10)]
    short_hash: Annotated[str, Field(max_length=64)] = ""


class WireSource(_Part):
    """Where the job's source image came from (its bytes travel in the entry's "source" field)."""

    path: Annotated[str, Field(min_length=1, max_length=1000)]
    sha256: Sha256
    job_id: JobId | None = None
    index: Annotated[int, Field(ge=0, lt=MAX_IMAGES)] = 0


class WireHires(_Part):
    scale: Annotated[float, Field(ge=1, le=4)]
    strength: Strength


class WireParams(_Message):
    """GenerationParams on the wire, bounded."""

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    width: Annotated[int, Field(ge=64, le=8192)]
    height: Annotated[int, Field(ge=64, le=8192)]
    steps: Annotated[int, Field(ge=1, le=500)]
    cfg: Annotated[float, Field(ge=0, le=100)]
    seeds: Annotated[tuple[Annotated[int, Field(ge=0, lt=2**64)], ...], Field(min_length=1, max_length=MAX_IMAGES)]
    sampler: Annotated[str, Field(min_length=1, max_length=40)]
    loras: Annotated[tuple[WireLora, ...], Field(max_length=MAX_LORAS)] = ()
    source: WireSource | None = None
    strength: Strength = 1.0
    hires: WireHires | None = None

    @classmethod
    def of(cls, params: GenerationParams) -> WireParams:
        source = params.source
        return cls(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=params.width,
            height=params.height,
            steps=params.steps,
            cfg=params.cfg,
            seeds=params.seeds,
            sampler=params.sampler,
            loras=tuple(
                WireLora(name=lora.name, sha256=lora.sha256, weight=lora.weight, short_hash=lora.short_hash)
                for lora in params.loras
            ),
            source=None
            if source is None
            else WireSource(path=source.path, sha256=source.sha256, job_id=source.job_id, index=source.index),
            strength=params.strength,
            hires=None if params.hires is None else WireHires(scale=params.hires.scale, strength=params.hires.strength),
        )

    def to_params(self) -> GenerationParams:
        source = self.source
        return GenerationParams(
            self.prompt,
            self.negative_prompt,
            self.width,
            self.height,
            self.steps,
            self.cfg,
            self.seeds,
            self.sampler,
            loras=tuple(LoraWeight(lora.name, lora.sha256, lora.weight, lora.short_hash) for lora in self.loras),
            source=None if source is None else SourceImage(source.path, source.sha256, source.job_id, source.index),
            strength=self.strength,
            hires=None if self.hires is None else HiresFix(self.hires.scale, self.hires.strength),
        )


class JobMessage(_Message):
    """A job handed to one worker (its inbox). Field "job" of the stream entry."""

    job_id: JobId
    attempt: Annotated[int, Field(ge=1, le=1000)]  # jobs.attempts after the dispatch's claim
    token: Token
    model: ModelName  # the model's name in the config: the worker builds its ModelSpec from its own config
    params: WireParams
    sent_at: float  # the bot's clock (time.time()), for the dispatch latency

    def fields(self, source: bytes | None = None) -> dict[str, bytes]:
        """The stream entry: the JSON, and the source image's PNG bytes (field "source") for a job that starts from
        one (img2img, vary, upscale), as the queue read and checked them (JobQueue.source_png). Raises ProtocolError
        when they are missing, not a PNG or too large (not hashed again here: this runs on the bot's event loop)."""
        _check_source(self, source, hashed=False)
        entry = {"job": self.to_json()}
        if source is not None:
            entry["source"] = source
        return entry

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> JobMessage:
        """The message, with the cheap checks of its source bytes (present where the job names one, a PNG, bounded);
        `checked_source` hashes them. Raises ProtocolError."""
        message: JobMessage = cls.from_json(fields.get(b"job"))
        extra = set(fields) - {b"job", b"source"}
        if extra:
            raise ProtocolError(f"JobMessage: unexpected fields {sorted(extra)[:3]!r}"[:200])
        _check_source(message, fields.get(b"source"), hashed=False)
        return message

    def checked_source(self, fields: Mapping[bytes, bytes]) -> bytes | None:
        """The entry's source image bytes (None: a job without one), checked to be the image the job names by their
        SHA-256. Blocking for a large image (call it on a thread). Raises ProtocolError."""
        source = fields.get(b"source")
        _check_source(self, source)
        return source


def _check_source(message: JobMessage, source: bytes | None, *, hashed: bool = True) -> None:
    expected = message.params.source
    if expected is None:
        if source is not None:
            raise ProtocolError("JobMessage: a source image for a job without one")
        return
    if source is None:
        raise ProtocolError("JobMessage: the source image is missing")
    if len(source) > MAX_SOURCE_BYTES:
        raise ProtocolError(f"JobMessage: a source image of {len(source)} bytes, more than {MAX_SOURCE_BYTES}")
    if not source.startswith(PNG_SIGNATURE):
        raise ProtocolError("JobMessage: the source image is not a PNG")
    if hashed and hashlib.sha256(source).hexdigest() != expected.sha256:
        raise ProtocolError("JobMessage: the source image is not the one the job names")


class ImageMeta(_Message):
    index: Annotated[int, Field(ge=0, lt=MAX_IMAGES)]
    seed: Annotated[int, Field(ge=0, lt=2**64)]
    width: Annotated[int, Field(ge=1, le=16384)]
    height: Annotated[int, Field(ge=1, le=16384)]
    parameters: Annotated[str, Field(max_length=MAX_PARAMETERS_CHARS)]


Outcome = Literal["done", "failed", "cancelled"]


class ResultMessage(_Message):
    """What became of one job. Field "result" of the stream entry; image i's PNG bytes are field "png:i"."""

    job_id: JobId
    attempt: Annotated[int, Field(ge=1, le=1000)]
    token: Token
    worker: WorkerId
    outcome: Outcome
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] | None = None  # failed: the user-readable reason
    images: Annotated[tuple[ImageMeta, ...], Field(max_length=MAX_IMAGES)] = ()
    run_seconds: Annotated[float, Field(ge=0)] = 0.0  # started → result sent, on the worker

    @field_validator("images")
    @classmethod
    def _distinct_indexes(cls, images: tuple[ImageMeta, ...]) -> tuple[ImageMeta, ...]:
        if len({image.index for image in images}) != len(images):
            raise ValueError("image indexes repeat")
        return images

    def fields(self, pngs: list[bytes], max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> dict[str, bytes]:
        """The stream entry: the JSON and one field per image. Raises ProtocolError when the PNGs do not match the
        images or weigh more than `max_bytes` (the sender then reports the job failed instead)."""
        _check_pngs(self, pngs, max_bytes)
        entry = {"result": self.to_json()}
        for image, png in zip(self.images, pngs, strict=True):
            entry[f"png:{image.index}"] = png
        return entry

    @classmethod
    def from_fields(
        cls, fields: Mapping[bytes, bytes], max_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> tuple[ResultMessage, list[bytes]]:
        """The message and its PNGs in the order of `images`. Raises ProtocolError."""
        message: ResultMessage = cls.from_json(fields.get(b"result"))
        expected = {f"png:{image.index}".encode() for image in message.images} | {b"result"}
        extra = set(fields) - expected
        if extra:
            raise ProtocolError(f"ResultMessage: unexpected fields {sorted(extra)[:3]!r}"[:200])
        if len(fields) != len(expected):
            raise ProtocolError("ResultMessage: images and PNGs differ in number")
        pngs = [fields[f"png:{image.index}".encode()] for image in message.images]
        _check_pngs(message, pngs, max_bytes)
        return message, pngs


def _check_pngs(message: ResultMessage, pngs: list[bytes], max_bytes: int) -> None:
    if message.outcome != "done" and (message.images or pngs):
        raise ProtocolError(f"ResultMessage: a {message.outcome} result carries images")
    if message.outcome == "done" and not message.images:
        raise ProtocolError("ResultMessage: a done result without images")
    if len(pngs) != len(message.images):
        raise ProtocolError("ResultMessage: images and PNGs differ in number")
    total = sum(len(png) for png in pngs)
    if total > max_bytes:
        raise ProtocolError(f"ResultMessage: {total} bytes of PNG, more than {max_bytes}")
    if any(not png.startswith(PNG_SIGNATURE) for png in pngs):
        raise ProtocolError("ResultMessage: an image is not a PNG")


class EventMessage(_Message):
    """Something the bot shows while a job runs. Field "event" of the events stream's entry."""

    kind: Literal["started", "progress", "loading"]
    worker: WorkerId
    job_id: JobId | None = None  # started, progress
    token: Token | None = None  # started, progress: events of a job not (or no longer) handed out are ignored
    step: Annotated[int, Field(ge=0, le=100_000)] = 0  # progress
    total: Annotated[int, Field(ge=0, le=100_000)] = 0
    elapsed: Annotated[float, Field(ge=0)] = 0.0
    model: ModelName | None = None  # loading
    stage: Annotated[str, Field(max_length=100)] = ""  # loading
    done: Annotated[int, Field(ge=0, le=1000)] = 0
    stages: Annotated[int, Field(ge=0, le=1000)] = 0

    def fields(self) -> dict[str, bytes]:
        return {"event": self.to_json()}

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> EventMessage:
        message: EventMessage = cls.from_json(fields.get(b"event"))
        return message


class Heartbeat(_Message):
    """A worker's announcement, rewritten every heartbeat interval into `P:worker:{id}` with an expiry of the
    visibility timeout: while the key exists the worker is alive."""

    id: WorkerId
    host: Annotated[str, Field(max_length=255)] = ""
    pid: Annotated[int, Field(ge=0)] = 0
    device: Annotated[str, Field(max_length=40)] = ""  # "cuda:1", "cpu"
    models: Annotated[tuple[ModelName, ...], Field(max_length=100)] = ()  # what it can serve
    loaded: Annotated[tuple[ModelName, ...], Field(max_length=100)] = ()  # what it holds now (first: in use)
    slots: Annotated[int, Field(ge=1, le=64)] = 1  # jobs it runs at once
    busy: Annotated[tuple[JobId, ...], Field(max_length=64)] = ()  # jobs it runs or has read and not finished
    budget: Annotated[int, Field(ge=0)] | None = None  # bytes of device memory usable (None: unknown, the CPU)
    free: Annotated[int, Field(ge=0)] | None = None  # bytes free on the device now
    started_at: float = 0.0
    sent_at: float = 0.0

    def to_bytes(self) -> bytes:
        return self.to_json()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Heartbeat:
        message: Heartbeat = cls.from_json(raw)
        return message


class ControlMessage(_Message):
    """Published on `P:control:{worker}`: stop a job between two steps."""

    kind: Literal["cancel"] = "cancel"
    job_id: JobId
    token: Token

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ControlMessage:
        message: ControlMessage = cls.from_json(raw)
        return message


def dead_letter(fields: Mapping[bytes, bytes], source: str, reason: str) -> dict[str, bytes]:
    """The dead-letter entry for a stream entry that did not validate: where it came from, why, and its fields
    (each cut to 4 KB: a dead letter is for reading, not for replaying)."""
    kept = {
        key.decode("utf-8", "replace")[:100]: value[:4096].decode("utf-8", "replace")
        for key, value in fields.items()
    }
    return {
        "source": source.encode()[:200],
        "reason": reason.encode()[:1000],
        "fields": json.dumps(kept, ensure_ascii=False).encode()[:MAX_JSON_BYTES],
    }
