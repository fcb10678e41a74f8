"""The Discord side's import rules, read from the source: cogs import bot.* and never each other at run time
(a type-only import under TYPE_CHECKING is fine), and nothing in bot/ imports a cog (the client loads them
by name)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def runtime_imports(path: Path) -> set[str]:
    """Modules a file imports when it runs: everything but the body of `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_cogs_import_no_other_cog_at_run_time() -> None:
    offenders = {
        f"{path.name} imports {name}"
        for path in sorted((ROOT / "cogs").glob("*.py"))
        for name in runtime_imports(path)
        if name == "cogs" or name.startswith("cogs.")
    }
    assert not offenders


def test_bot_imports_no_cog() -> None:
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "bot").rglob("*.py"))
        for name in runtime_imports(path) | _type_only_imports(path)
        if name == "cogs" or name.startswith("cogs.")
    }
    assert not offenders


def _type_only_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_the_rule_reader_sees_runtime_and_type_only_imports(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nimport cogs.a\nif TYPE_CHECKING:\n    from cogs.b import B\n"
        "def f():\n    from cogs.c import C\n",
        encoding="utf-8",
    )
    assert runtime_imports(source) == {"typing", "cogs.a", "cogs.c"}
    assert {"cogs.b"} <= _type_only_imports(source)
