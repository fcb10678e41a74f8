"""`animebot tags update`: fetch a full tag list (or take a local file) and swap it in only when complete.

The download goes to ``<db>.download.part``: an interrupted one is resumed with an HTTP Range request
the next time, guarded by If-Range with the file's ETag (or Last-Modified), so a file that changed upstream
in between is fetched whole again instead of being spliced (as is one from a server that ignores ranges,
or that gave no validator).
When the body is complete (the announced length, if any, is reached) the list is imported into a new
database file beside the old one, opened like the bot opens it, and only then renamed over the old one
(an atomic rename). Whatever fails on the way, the old database stays as it was and keeps working.

HTTPS only, except plain http to a loopback address (tests run a local server). Synchronous and
blocking: a command-line tool; it never runs on the bot's event loop.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from bot.prompts.tags.importer import ImportReport, import_csv
from bot.prompts.tags.index import TagDatabase
from bot.prompts.tags.model import TagImportError

# The community list the a1111 tag-autocomplete extension ships (MIT): every Danbooru tag with its
# aliases, about 3.5 MB. `[tags] update_url` in the config replaces it.
DEFAULT_UPDATE_URL = (
    "https://raw.githubusercontent.com/DominikDoom/a1111-sd-webui-tagcomplete/main/tags/danbooru.csv"
)
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the full list is ~3.5 MB; more is not a tag list
TIMEOUT_SECONDS = 30.0
CHUNK = 64 * 1024


class Progress(Protocol):
    """What the download reports to (a tqdm bar in the CLI; nothing in tests)."""

    def start(self, total: int | None, already: int) -> None: ...
    def advance(self, n: int) -> None: ...


class _Silent:
    def start(self, total: int | None, already: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


@dataclass(frozen=True)
class UpdateReport:
    source: str
    downloaded: int  # bytes fetched by this run (0 for a local file)
    resumed_from: int  # bytes already on disk from an interrupted run
    report: ImportReport

    def summary(self) -> str:
        lines = []
        if self.resumed_from:
            lines.append(f"resumed a download at {self.resumed_from:,} bytes")
        if self.downloaded:
            lines.append(f"downloaded {self.downloaded:,} bytes from {self.source}")
        lines.append(self.report.summary())
        return "\n".join(lines)


def is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme.lower() in ("http", "https")


def check_url(url: str) -> None:
    """HTTPS, or plain http to a loopback host; TagImportError otherwise."""
    parts = urllib.parse.urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme == "https" and host:
        return
    if scheme == "http" and host:
        loopback = host == "localhost"
        with contextlib.suppress(ValueError):
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        if loopback:
            return
        raise TagImportError(f"refusing plain http for {host}: use an https:// address")
    raise TagImportError(f"not a download address: {url!r} (expected https://...)")


def _total_length(response: urllib.response.addinfourl, already: int) -> int | None:
    """The full file size the server announces (Content-Range on a 206, Content-Length otherwise)."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(
    url: str, part: Path, progress: Progress | None = None, max_bytes: int = MAX_DOWNLOAD_BYTES
) -> tuple[int, int]:
    """Fetch ``url`` into ``part``, resuming what is there. Returns (bytes fetched now, bytes resumed).

    Raises TagImportError when the body is cut short, too large, or the server answers an error; the
    part file is kept for the next try unless it can only be wrong (larger than allowed).
    """
    check_url(url)
    progress = progress or _Silent()
    validator_file = part.with_name(part.name + ".validator")
    already = part.stat().st_size if part.is_file() else 0
    validator = validator_file.read_text(encoding="utf-8").strip() if already and validator_file.is_file() else ""
    if not validator:
        already = 0  # a part without the file's ETag/Last-Modified cannot be resumed safely
    request = urllib.request.Request(url, headers={"User-Agent": "animebot-tags-update"})
    if already:
        # If-Range: the rest of *this* version of the file, or (it changed upstream) the whole new one.
        request.add_header("Range", f"bytes={already}-")
        request.add_header("If-Range", validator)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and already:  # the range starts at the end: the part is the whole file
            return 0, already
        raise TagImportError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TagImportError(f"download of {url} failed: {reason}") from None
    fetched = 0
    with response:
        if response.status != 206:
            already = 0  # the server sent the whole file: start over
            validator_file.unlink(missing_ok=True)
        total = _total_length(response, already)
        if total is not None and total > max_bytes:
            limit = max_bytes // 10**6
            raise TagImportError(f"{url} is {total / 1e6:.0f} MB; a tag list is a few MB (limit {limit} MB)")
        new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
        if not already and new_validator:
            validator_file.write_text(new_validator, encoding="utf-8")
        progress.start(total, already)
        try:
            with part.open("ab" if already else "wb") as out:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    fetched += len(chunk)
                    if already + fetched > max_bytes:
                        out.close()
                        part.unlink(missing_ok=True)
                        validator_file.unlink(missing_ok=True)
                        raise TagImportError(f"{url} is larger than {max_bytes // 10**6} MB; not a tag list")
                    out.write(chunk)
                    progress.advance(len(chunk))
        except (OSError, http.client.HTTPException) as exc:  # a reset connection, a cut chunk, a full disk
            kept = already + fetched
            raise TagImportError(
                f"download of {url} stopped after {kept:,} bytes ({exc}); run the update again to resume"
            ) from None
    size = already + fetched
    if total is not None and size < total:
        raise TagImportError(
            f"download of {url} stopped at {size:,} of {total:,} bytes; run the update again to resume"
        )
    return fetched, already


def replace_database(source: Path, db_path: Path) -> ImportReport:
    """Import ``source`` into a new file beside ``db_path``, open it as the bot does, then rename it over
    ``db_path``. The old database is untouched until the rename, and after any failure."""
    new = db_path.with_name(db_path.name + ".new")
    new.unlink(missing_ok=True)
    try:
        report = import_csv(source, new)
        TagDatabase.open(new)  # exactly what the bot will do with it
        new.replace(db_path)
    finally:
        new.unlink(missing_ok=True)
    return replace(report, db_path=db_path)


def update(
    source: str,
    db_path: Path,
    progress: Progress | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> UpdateReport:
    """Replace the tag database with the list at ``source`` (a URL or a local file)."""
    if not is_url(source):
        return UpdateReport(source, 0, 0, replace_database(Path(source), db_path))
    part = db_path.with_name(db_path.name + ".download.part")
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TagImportError(f"cannot create the folder for {db_path}: {exc.strerror or exc}") from None
    fetched, resumed = download(source, part, progress, max_bytes)
    validator = part.with_name(part.name + ".validator")
    try:
        report = replace_database(part, db_path)
    except TagImportError:
        part.unlink(missing_ok=True)  # complete but not a tag list: a retry must download it afresh
        validator.unlink(missing_ok=True)
        raise
    part.unlink(missing_ok=True)
    validator.unlink(missing_ok=True)
    return UpdateReport(source, fetched, resumed, report)
