"""The LoRA library: the .safetensors files of a folder (`[loras] directory`), each with what the bot needs to offer,
check and record it. No torch: the bot process reads it, and so does `animebot worker` to find a job's files.

A file `<stem>.safetensors` may have a sidecar `<stem>.toml` beside it:

    name = "Pixel art"          # the name users type and see (default: the file's stem)
    family = "sdxl"             # sdxl | anima (default: guessed from the file's keys)
    weight = 0.8                # the weight when a request gives none (default 1.0)
    triggers = ["pixel art"]    # trigger words
    trigger_position = "start"  # where they are added to the prompt: start | end | none (default start)
    nsfw = false                # true: refused where nsfw is not allowed

A file without a family in its sidecar gets one guessed from its tensor names and shapes, read from the
safetensors header alone (8 bytes + a JSON header: a gigabyte file costs a few KB). Files that cannot be used (an
unreadable header, a family that cannot be guessed, a bad sidecar, a name taken by another file or holding the
characters of the lora syntax `,:<>`) are left out with a line in `problems` each.

Hashes: the file's SHA-256 (how a worker finds its own copy, whatever the file is called there) and WebUI's short
hash (AutoV3, the "Lora hashes" of its PNG parameters: the first 12 hex digits of the SHA-256 of the bytes after the
safetensors header). Both come from one read of the file, and are kept in a JSON cache keyed by (path, size,
modification time), so a restart or a reload hashes only new or changed files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from inference.specs import Family
from inference.types import LoraFile, LoraWeight

log = logging.getLogger(__name__)

TriggerPosition = Literal["start", "end", "none"]
TRIGGER_POSITIONS: tuple[TriggerPosition, ...] = ("start", "end", "none")
FAMILIES: tuple[Family, ...] = ("sdxl", "anima")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
MAX_NAME_LENGTH = 100
MAX_TRIGGERS = 20
MAX_TRIGGER_LENGTH = 200
MAX_SIDECAR_BYTES = 64 * 1024
RESERVED = re.compile(r"[,:<>]")  # the lora option's and the prompt syntax's separators
_CHUNK = 1024 * 1024
_SIDECAR_KEYS = {"name", "family", "weight", "triggers", "trigger_position", "nsfw"}
# Cross-attention input widths (the text embedding) of model families this bot does not run.
_OTHER_CROSS_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}


class LoraLoadError(Exception):
    """A LoRA cannot be applied to this pipeline (missing file, unreadable layout, another family); the message is
    short and meant for the user whose job failed."""


def lora_key(name: str) -> str:
    """The form a LoRA name is looked up by: NFKC, format characters dropped, casefolded, spaces collapsed."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.casefold().split())


def combine_loras(loras: Sequence[LoraFile]) -> list[LoraFile]:
    """One entry per file (by SHA-256), in first-seen order; the weights of repeats add up."""
    combined: dict[str, LoraFile] = {}
    for lora in loras:
        seen = combined.get(lora.sha256)
        combined[lora.sha256] = lora if seen is None else replace(seen, weight=seen.weight + lora.weight)
    return list(combined.values())


# -- the safetensors header ----------------------------------------------------------------------------------------


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (tensor name -> dtype, shape, offsets; "__metadata__"). ValueError
    when the file is not one."""
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) != 8:
            raise ValueError("too short for a safetensors file")
        size = int.from_bytes(size_bytes, "little")
        if not 2 <= size <= MAX_HEADER_BYTES:
            raise ValueError("not a safetensors file")
        raw = f.read(size)
    if len(raw) != size:
        raise ValueError("truncated safetensors header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("unreadable safetensors header (not an object)")
    return header


def safetensors_keys(path: Path) -> list[str]:
    return [key for key in safetensors_header(path) if key != "__metadata__"]


def file_hashes(path: Path) -> tuple[str, str]:
    """(SHA-256 of the whole file, WebUI's AutoV3 short hash: 12 hex of the SHA-256 after the header), one read."""
    whole, tensors = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        whole.update(head)
        remaining = int.from_bytes(head, "little") if len(head) == 8 else 0
        while remaining > 0:
            chunk = f.read(min(_CHUNK, remaining))
            if not chunk:
                break
            whole.update(chunk)
            remaining -= len(chunk)
        while chunk := f.read(_CHUNK):
            whole.update(chunk)
            tensors.update(chunk)
    return whole.hexdigest(), tensors.hexdigest()[:12]


def guess_family(header: dict[str, Any]) -> tuple[Family | None, str]:
    """The family a LoRA's tensor names point to, with the reason when there is none."""
    keys = [key for key in header if key != "__metadata__"]
    if not keys:
        return None, "it holds no tensors"
    for key in keys:
        if ("attn2_to_k" in key or "attn2.to_k" in key) and ("lora_down" in key or "lora_A" in key):
            shape = header[key].get("shape") if isinstance(header[key], dict) else None
            if isinstance(shape, list) and len(shape) == 2 and shape[1] in _OTHER_CROSS_WIDTHS:
                return None, f"it is a LoRA for {_OTHER_CROSS_WIDTHS[shape[1]]}"
    if any(k.startswith(("lora_te_", "lora_te_text_model")) for k in keys):
        return None, "it looks like a LoRA for SD 1.x (one text encoder)"
    anima = ("diffusion_model.blocks.", "lora_unet_blocks_", "text_conditioner.")
    if any(k.startswith(anima) or "llm_adapter" in k or "adaln_modulation" in k for k in keys):
        return "anima", ""
    sdxl_parts = ("input_blocks", "output_blocks", "middle_block", "down_blocks", "up_blocks", "mid_block")
    for key in keys:
        if key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
            return "sdxl", ""
        if key.startswith(("lora_unet_", "unet.")) and any(part in key for part in sdxl_parts):
            return "sdxl", ""
    if any(k.startswith("transformer.transformer_blocks.") and (".attn1." in k or ".attn2." in k) for k in keys):
        return "anima", ""
    return None, 'its family cannot be told from its keys (say it in a sidecar: family = "sdxl")'


# -- the library ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraEntry:
    name: str  # as users type and see it
    path: Path
    family: Family
    sha256: str
    short_hash: str  # AutoV3 (WebUI's "Lora hashes")
    weight: float = 1.0  # the default weight
    triggers: tuple[str, ...] = ()
    trigger_position: TriggerPosition = "start"
    nsfw: bool = False

    @property
    def key(self) -> str:
        return lora_key(self.name)

    def at(self, weight: float | None) -> LoraWeight:
        """This LoRA as a job stores it, at `weight` (None: the default)."""
        return LoraWeight(self.name, self.sha256, self.weight if weight is None else weight, self.short_hash)


@dataclass(frozen=True)
class Sidecar:
    name: str | None = None
    family: Family | None = None
    weight: float = 1.0
    triggers: tuple[str, ...] = ()
    trigger_position: TriggerPosition = "start"
    nsfw: bool = False


def read_sidecar(path: Path) -> Sidecar:
    """A sidecar TOML, checked field by field. ValueError with the reason."""
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise ValueError(f"larger than {MAX_SIDECAR_BYTES // 1024} KB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(str(e)) from None
    unknown = set(data) - _SIDECAR_KEYS
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_SIDECAR_KEYS))})")
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError("name must be a non-empty string")
    family = data.get("family")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}")
    weight = data.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ValueError("weight must be a number")
    triggers = data.get("triggers", [])
    if isinstance(triggers, str):
        triggers = [triggers]
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise ValueError("triggers must be a list of strings")
    if len(triggers) > MAX_TRIGGERS or any(len(t) > MAX_TRIGGER_LENGTH for t in triggers):
        raise ValueError(f"at most {MAX_TRIGGERS} triggers of {MAX_TRIGGER_LENGTH} characters")
    position = data.get("trigger_position", "start")
    if position not in TRIGGER_POSITIONS:
        raise ValueError(f"trigger_position must be one of {', '.join(TRIGGER_POSITIONS)}")
    nsfw = data.get("nsfw", False)
    if not isinstance(nsfw, bool):
        raise ValueError("nsfw must be true or false")
    return Sidecar(
        name=None if name is None else " ".join(name.split()),
        family=family,
        weight=float(weight),
        triggers=tuple(t.strip() for t in triggers if t.strip()),
        trigger_position=position,
        nsfw=nsfw,
    )


class HashCache:
    """SHA-256 and AutoV3 per file, keyed by (resolved path, size, mtime_ns), in a JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        self._changed = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self._entries = {k: v for k, v in data.items() if isinstance(v, dict)}
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                log.warning("LoRA hash cache %s is unreadable: hashing again", path)
        self.hashed = 0  # files read in full by this cache (tests: a restart hashes nothing again)

    def hashes(self, file: Path) -> tuple[str, str]:
        stat = file.stat()
        key = str(file.resolve())
        entry = self._entries.get(key)
        if entry is not None and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            sha256, short = entry.get("sha256"), entry.get("autov3")
            if isinstance(sha256, str) and isinstance(short, str):
                return sha256, short
        sha256, short = file_hashes(file)
        self.hashed += 1
        self._entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256, "autov3": short}
        self._changed = True
        return sha256, short

    def save(self, keep: set[str]) -> None:
        """Write the cache (only the files still there), atomically. A failure is logged: hashes are redone."""
        if self.path is None:
            return
        kept = {k: v for k, v in self._entries.items() if k in keep}
        if not self._changed and kept == self._entries:
            return
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(kept, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("LoRA hash cache %s could not be written: %s", self.path, e)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._entries, self._changed = kept, False


@dataclass(frozen=True)
class LoraLibrary:
    """The LoRAs found in `directory` at the last scan."""

    directory: Path | None = None
    entries: tuple[LoraEntry, ...] = ()  # by name (folded)
    problems: tuple[str, ...] = ()  # one line per file left out
    _by_key: dict[str, LoraEntry] = field(default_factory=dict, compare=False, repr=False)
    _by_sha: dict[str, LoraEntry] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for entry in self.entries:
            self._by_key.setdefault(entry.key, entry)
            self._by_sha.setdefault(entry.sha256, entry)

    @classmethod
    def scan(cls, directory: Path | None, cache: HashCache | None = None) -> LoraLibrary:
        """Read the folder (blocking: call it off the event loop). A missing folder is an empty library."""
        if directory is None or not directory.is_dir():
            return cls(directory)
        cache = cache or HashCache(None)
        entries: list[LoraEntry] = []
        problems: list[str] = []
        names: dict[str, Path] = {}
        files = sorted(
            p
            for p in directory.rglob("*.safetensors")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        )
        for file in files:
            shown = file.relative_to(directory)
            try:
                entry = _entry(file, cache)
            except (OSError, ValueError) as e:
                problems.append(f"{shown}: {e}")
                continue
            if RESERVED.search(entry.name) or len(entry.name) > MAX_NAME_LENGTH or not entry.key:
                problems.append(f"{shown}: the name {entry.name!r} is empty, too long or holds one of , : < >")
                continue
            taken = names.get(entry.key)
            if taken is not None:
                problems.append(f"{shown}: the name {entry.name!r} is already used by {taken.relative_to(directory)}")
                continue
            names[entry.key] = file
            entries.append(entry)
        cache.save({str(f.resolve()) for f in files})
        for line in problems:
            log.warning("LoRA library: %s", line)
        return cls(directory, tuple(sorted(entries, key=lambda e: e.key)), tuple(problems))

    def get(self, name: str) -> LoraEntry | None:
        return self._by_key.get(lora_key(name))

    def for_family(self, family: str) -> list[LoraEntry]:
        return [entry for entry in self.entries if entry.family == family]

    def path_for(self, sha256: str) -> Path | None:
        """Where this host keeps the file with this SHA-256 (the worker's lookup), or None."""
        entry = self._by_sha.get(sha256)
        return None if entry is None else entry.path


def _entry(file: Path, cache: HashCache) -> LoraEntry:
    sidecar_path = file.with_suffix(".toml")
    try:
        sidecar = read_sidecar(sidecar_path) if sidecar_path.is_file() else Sidecar()
    except (OSError, ValueError) as e:
        raise ValueError(f"sidecar {sidecar_path.name}: {e}") from None
    header = safetensors_header(file)
    family = sidecar.family
    if family is None:
        family, reason = guess_family(header)
        if family is None:
            raise ValueError(f"left out: {reason}")
    if family == "anima" and any(key.startswith(("lora_unet_", "lora_te")) for key in header):
        raise ValueError("left out: kohya's Anima layout (lora_unet_...), which diffusers cannot load for Anima")
    sha256, short = cache.hashes(file)
    return LoraEntry(
        name=sidecar.name or " ".join(file.stem.split()),
        path=file,
        family=family,
        sha256=sha256,
        short_hash=short,
        weight=sidecar.weight,
        triggers=sidecar.triggers,
        trigger_position=sidecar.trigger_position,
        nsfw=sidecar.nsfw,
    )


class LoraLookup:
    """How a worker finds a job's LoRA file by SHA-256 (GpuWorker's `loras`): this host's library, read again when a
    file is not in it (at most once every `rescan_after` seconds), so a file copied in after the start is found
    without a restart. Thread-safe: the GPU thread calls it."""

    def __init__(self, directory: Path | None, cache_file: Path | None = None, rescan_after: float = 30.0) -> None:
        self.directory = directory
        self.cache_file = cache_file
        self.rescan_after = rescan_after
        self._lock = threading.Lock()
        self._library: LoraLibrary | None = None
        self._scanned_at = -math.inf

    @property
    def library(self) -> LoraLibrary:
        with self._lock:
            return self._scan_locked() if self._library is None else self._library

    def __call__(self, sha256: str) -> Path | None:
        with self._lock:
            library = self._scan_locked() if self._library is None else self._library
            path = library.path_for(sha256)
            if path is None and time.monotonic() - self._scanned_at >= self.rescan_after:
                path = self._scan_locked().path_for(sha256)
            return path

    def _scan_locked(self) -> LoraLibrary:
        self._library = LoraLibrary.scan(self.directory, HashCache(self.cache_file))
        self._scanned_at = time.monotonic()
        return self._library
