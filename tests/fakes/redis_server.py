"""A real redis-server for tests: started on a free 127.0.0.1 port in a temporary directory, with the
append-only file on (appendfsync always, so a restart loses nothing), stopped at the end. Restartable on the
same port and directory, to test what survives a Redis restart; killable, to test Redis being down.

Tests that need it take the `redis_server` fixture (tests/conftest.py); they skip with the reason when the
server is not installed (`.ci/run` installs Debian's redis-server)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = "redis-server"
MISSING = "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, password: str | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which(REDIS_SERVER) is not None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"redis-server exited at start:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not answer in time")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                command = b"PING\r\n" if not self.password else f"AUTH {self.password}\r\nPING\r\n".encode()
                sock.sendall(command)
                reply = b""
                while b"PONG" not in reply:
                    chunk = sock.recv(64)
                    if not chunk:
                        return False
                    reply += chunk
                return True
        except OSError:
            return False

    def add_user(self, name: str, password: str, rules: list[str]) -> str:
        """An ACL user with `rules` (e.g. ["~animebot:*", "-@all", "+xadd"]); the URL that logs in as it."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        try:
            client.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", *rules)
        finally:
            client.close()
        return f"redis://{name}:{password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: Redis flushes the append-only file)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: Redis dies as on a crash (with appendfsync always, every acknowledged write is on disk)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def documented_acl_rules(user: str = "animebot") -> list[str]:
    """The ACL rule docs/scaling.md gives for the pool's Redis user (after `user NAME on >PASSWORD`): the tests
    run the pool as that user, so the page stays true."""
    page = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
    for line in page.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:3] == ["user", user, "on"]:
            return [word for word in words[3:] if not word.startswith(">")]
    raise AssertionError(f"docs/scaling.md has no 'user {user} on ...' line")
