"""`animebot tags update` against a loopback HTTP server: a complete download replaces the database, a cut
or broken one leaves the old database working and is resumed with a Range request."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.cli import main
from bot.prompts.tags import TagDatabase, TagImportError
from bot.prompts.tags.update import check_url, update

OLD_CSV = "old_tag,0,10,\n"
NEW_CSV = "".join(f"tag_{i:04d},{(0, 1, 4)[i % 3]},{10_000 - i},alias_{i:04d}\n" for i in range(3000)).encode()


@dataclass
class Behaviour:
    body: bytes = NEW_CSV
    cut_at: int | None = None  # send the full Content-Length, then close after this many bytes (once)
    status: int = 200
    ranges: list[str | None] = field(default_factory=list)  # the Range header of each request


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def do_GET(self) -> None:
        b = self.server.behaviour  # type: ignore[attr-defined]
        header = self.headers.get("Range")
        b.ranges.append(header)
        if b.status != 200:
            self.send_error(b.status)
            return
        etag = '"' + hashlib.sha256(b.body).hexdigest()[:16] + '"'
        if header and self.headers.get("If-Range") != etag:
            header = None  # RFC 9110: a changed file (or no If-Range match) is sent whole
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        if start >= len(b.body) and header:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(b.body)}")
            self.end_headers()
            return
        body = b.body[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(b.body) - 1}/{len(b.body)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        if b.cut_at is not None:
            self.wfile.write(body[: b.cut_at])
            b.cut_at = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    behaviour = Behaviour()
    httpd.behaviour = behaviour  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/danbooru.csv", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "data"\n[tags]\nimport_default = false\n', encoding="utf-8")
    src = tmp_path / "old.csv"
    src.write_text(OLD_CSV, encoding="utf-8")
    assert main(["tags", "import", str(src), "--config", str(path)]) == 0
    return path


def db_of(config: Path) -> Path:
    return config.parent / "data" / "tags.sqlite"


def names(db: Path) -> set[str]:
    return {t.name for t in TagDatabase.open(db).lookup(["old_tag", "tag_0000", "tag_2999"]).values()}


def test_a_complete_download_replaces_the_database(
    server: tuple[str, Behaviour], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = server
    assert main(["tags", "update", url, "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert "imported 3,000 tags" in out and f"downloaded {len(NEW_CSV):,} bytes" in out
    assert "tags:" in err and "100%" in err  # the tqdm bar
    assert names(db_of(config)) == {"tag_0000", "tag_2999"}
    assert [p.name for p in db_of(config).parent.iterdir()] == ["tags.sqlite"]  # no part or new file left


def test_a_cut_download_keeps_the_old_database_and_resumes(
    server: tuple[str, Behaviour], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, behaviour = server
    behaviour.cut_at = 20_000
    assert main(["tags", "update", url, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "run the update again to resume" in err and "the tag database was not changed" in err
    assert names(db_of(config)) == {"old_tag"}  # still the old list, still opens
    part = db_of(config).with_name("tags.sqlite.download.part")
    assert part.stat().st_size == 20_000

    assert main(["tags", "update", url, "--config", str(config)]) == 0
    assert "resumed a download at 20,000 bytes" in capsys.readouterr().out
    assert behaviour.ranges == [None, "bytes=20000-"]
    assert names(db_of(config)) == {"tag_0000", "tag_2999"}
    assert not part.exists()


def test_a_file_changed_upstream_is_fetched_whole_not_spliced(
    server: tuple[str, Behaviour], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, behaviour = server
    behaviour.cut_at = 20_000
    assert main(["tags", "update", url, "--config", str(config)]) == 1
    behaviour.body = NEW_CSV.replace(b"tag_", b"new_")  # the list was updated in between
    assert main(["tags", "update", url, "--config", str(config)]) == 0
    assert "resumed" not in capsys.readouterr().out
    db = TagDatabase.open(db_of(config))
    assert len(db) == 3000 and db.get("new_0000") is not None and db.get("tag_2999") is None


def test_a_download_that_is_not_a_tag_list_changes_nothing(
    server: tuple[str, Behaviour], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, behaviour = server
    behaviour.body = b"<html><body>Not found, but with a 200</body></html>\n" * 50
    assert main(["tags", "update", url, "--config", str(config)]) == 1
    assert "does not look like a tag-autocomplete CSV" in capsys.readouterr().err
    assert names(db_of(config)) == {"old_tag"}
    assert [p.name for p in db_of(config).parent.iterdir()] == ["tags.sqlite"]  # a retry starts afresh


def test_an_http_error_changes_nothing(
    server: tuple[str, Behaviour], config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, behaviour = server
    behaviour.status = 404
    assert main(["tags", "update", url, "--config", str(config)]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert names(db_of(config)) == {"old_tag"}


def test_a_too_large_download_is_refused(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, _ = server
    db = tmp_path / "tags.sqlite"
    with pytest.raises(TagImportError, match="a tag list is a few MB"):
        update(url, db, max_bytes=1000)
    assert not db.exists() and not list(tmp_path.iterdir())


def test_a_local_file_is_imported_the_same_way(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "full.csv"
    src.write_bytes(NEW_CSV)
    assert main(["tags", "update", str(src), "--config", str(config)]) == 0
    assert names(db_of(config)) == {"tag_0000", "tag_2999"}
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"\x00\x01binary")
    assert main(["tags", "update", str(broken), "--config", str(config)]) == 1
    assert names(db_of(config)) == {"tag_0000", "tag_2999"}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.org/danbooru.csv", True),
        ("http://127.0.0.1:8000/x.csv", True),
        ("http://[::1]:8000/x.csv", True),
        ("http://localhost/x.csv", True),
        ("http://example.org/danbooru.csv", False),
        ("http://10.0.0.1/x.csv", False),
        ("ftp://example.org/x.csv", False),
        ("https:///nohost", False),
    ],
)
def test_only_https_or_loopback_http(url: str, ok: bool) -> None:
    if ok:
        check_url(url)
    else:
        with pytest.raises(TagImportError):
            check_url(url)
