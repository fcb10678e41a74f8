"""The README's test command is exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

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
