"""What the tiny built-in models share: the byte-level BPE alphabet of their tokenizers, and building the
model once into a cache directory without ever leaving half a model under its final name."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_build_lock = threading.Lock()


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE (GPT-2, CLIP, Qwen) uses for the bytes 0..255, in vocabulary
    order: the printable bytes as themselves first (so "!" gets id 0 as in the real vocabularies), then
    the others mapped to chr(256 + n)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def build_once(target: Path, index_file: str, write: Callable[[Path], None]) -> Path:
    """`target`, written by `write(staging)` on the first call (when `target/index_file` is missing).

    `write` fills a temporary sibling directory that is then renamed into place, so an interrupted build
    never leaves a half-written model behind. Safe to call from several threads; if two processes race,
    the loser discards its copy.
    """
    if (target / index_file).is_file():
        return target
    with _build_lock:
        if (target / index_file).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            write(staging)
            if target.exists() and not (target / index_file).is_file():
                shutil.rmtree(target)  # a leftover from something other than us; never half a model
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / index_file).is_file():  # not a lost race: a real error
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
