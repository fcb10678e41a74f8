"""pyproject.toml declares every third-party package the code imports, and requirements.lock pins each of them
at a version the declaration accepts (what CI installs; the README says how to refresh it)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# The packages, and the benchmark scripts the others import by file name (measure, bench_decode, ...).
LOCAL = {"bot", "cogs", "inference", "tests", "benchmarks"} | {p.stem for p in (REPO / "benchmarks").glob("*.py")}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[dict[str, Requirement], dict[str, Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {canonical(r.name): r for r in map(Requirement, project["dependencies"])}
    test = {canonical(r.name): r for r in map(Requirement, project["optional-dependencies"]["test"])}
    return runtime, test


def imported_modules(*folders: str) -> dict[str, set[str]]:
    """{top-level third-party module: files importing it} over the given folders."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def distributions_of(module: str) -> set[str]:
    return {canonical(d) for d in packages_distributions().get(module, [module])}


@pytest.mark.parametrize(
    ("folders", "extras"),
    [(("bot", "cogs", "inference"), False), (("tests", "benchmarks"), True)],
    ids=["runtime", "tests"],
)
def test_every_imported_package_is_declared(folders: tuple[str, ...], extras: bool) -> None:
    runtime, test = declared()
    allowed = set(runtime) | (set(test) if extras else set())
    missing = {
        module: sorted(files)
        for module, files in imported_modules(*folders).items()
        if not distributions_of(module) & allowed
    }
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_lock_pins_every_declared_package() -> None:
    lock: dict[str, Version] = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            lock[canonical(name)] = Version(version)
    assert not {n for n in lock if n == "torch" or n.startswith(("nvidia-", "triton"))}, "no torch/CUDA in the lock"
    runtime, test = declared()
    for name, requirement in {**runtime, **test}.items():
        if name == "torch":
            continue  # installed first, the build that fits the machine
        assert name in lock, f"{name} is declared but not in requirements.lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"lock {name}=={lock[name]} vs {requirement}"
        )


def test_test_tools_are_pinned_exactly() -> None:
    _, test = declared()
    for name in ("ruff", "mypy", "hypothesis"):
        assert str(test[name].specifier).startswith("=="), f"{name} must be pinned exactly: {test[name]}"
