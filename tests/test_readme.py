"""The README's test command is exactly what CI runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Test it", 1)[1]
    command = re.search(r"```sh\n(.+?)\n```", section, re.S)
    assert command is not None
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert command.group(1).strip() in ci.splitlines()


def test_ci_installs_redis_server_before_the_tests() -> None:
    """The worker-pool tests need Debian's redis-server: .ci/run installs it (when missing) before the README's
    test command, and the README says so."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    lines = ci.splitlines()
    install = next(i for i, line in enumerate(lines) if "apt-get install -y -qq redis-server" in line)
    check = next(i for i, line in enumerate(lines) if "command -v redis-server" in line)
    tests = next(i for i, line in enumerate(lines) if "python -m pytest" in line)
    assert check < install < tests
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "apt-get install -y -qq redis-server" in readme.split("## Test it", 1)[1]
    assert "## Several GPUs or hosts" in readme and "docs/scaling.md" in readme


def _install_block() -> str:
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("if ! command -v redis-server"))
    end = next(i for i in range(start, len(lines)) if lines[i] == "fi")
    return "\n".join(["set -euo pipefail", *lines[start : end + 1], "echo done"])


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("uid", "apt_fails", "expected"),
    [
        (
            "1000",
            False,
            [
                "sudo apt-get update -qq",
                "apt-get update -qq",
                "sudo apt-get install -y -qq redis-server",
                "apt-get install -y -qq redis-server",
            ],
        ),
        ("0", False, ["apt-get update -qq", "apt-get install -y -qq redis-server"]),
        ("1000", True, ["sudo apt-get update -qq", "apt-get update -qq"]),
    ],
)
def test_ci_redis_install_step(tmp_path: Path, uid: str, apt_fails: bool, expected: list[str]) -> None:
    """.ci/run's install step, run with stub commands and no redis-server on the PATH: sudo only when not root;
    a failed install is a note, not a failed CI (the Redis tests then skip)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    _stub(bin_dir, "id", f"echo {uid}")
    _stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}; PATH={bin_dir} "$@"; exit $?')
    _stub(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}; exit {1 if apt_fails else 0}')
    done = subprocess.run(
        ["/bin/bash", "-c", _install_block()],
        env={"PATH": str(bin_dir)},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    assert calls == expected
    assert ("could not be installed: the Redis tests will skip" in done.stderr) == apt_fails


def test_ci_skips_the_install_when_redis_server_is_there(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    _stub(bin_dir, "redis-server", "exit 0")
    _stub(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}')
    done = subprocess.run(
        ["/bin/bash", "-c", _install_block()], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "done" and not log.exists()
