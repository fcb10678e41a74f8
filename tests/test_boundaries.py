"""The layers' import rules, read from the source (every import statement, also inside functions) and
checked at run time (what importing a module really loads). See docs/architecture.md.

- bot/core and bot/prompts: no discord, no torch (nor diffusers/transformers), no bot.discord_app, no
  cogs; prompts may use the core only for its errors and messages.
- inference/: never discord, never bot.*.
- cogs/: never torch or diffusers; never another cog at run time (only under TYPE_CHECKING).
- bot/ (the discord app included): never a cog, not even for types; the client loads them by name.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "compel", "accelerate")


@dataclass(frozen=True)
class Import:
    module: str  # the imported module, absolute
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = REPO) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, type_only)
                continue
            visit_stmt(child, type_only)

    def visit_stmt(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, node.lineno, type_only))
        visit(node, type_only)

    visit(tree, False)
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package.replace(".", "/")).rglob("*.py"))


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(
    package: str, forbidden: tuple[str, ...], *, allowed: tuple[str, ...] = (), runtime_only: bool = False
) -> list[str]:
    found: list[str] = []
    for path in sources(package):
        for imp in imports_of(path):
            if runtime_only and imp.type_only:
                continue
            if within(imp.module, *forbidden) and not within(imp.module, *allowed):
                found.append(f"{path.relative_to(REPO)}:{imp.line} imports {imp.module}")
    return found


def test_core_and_prompts_import_neither_discord_nor_torch() -> None:
    for package in ("bot.core", "bot.prompts"):
        assert violations(package, ("discord", *HEAVY, "bot.discord_app", "cogs"), runtime_only=True) == []


def test_prompts_use_the_core_only_for_errors_and_messages() -> None:
    allowed = ("bot.core.errors", "bot.core.messages")
    assert violations("bot.prompts", ("bot.core",), allowed=allowed) == []


def test_inference_never_imports_discord_or_the_bot() -> None:
    assert violations("inference", ("discord", "bot", "cogs")) == []


def test_cogs_never_import_torch_nor_each_other_at_run_time() -> None:
    assert violations("cogs", HEAVY) == []
    assert violations("cogs", ("cogs",), runtime_only=True) == []


def test_nothing_in_bot_imports_a_cog() -> None:
    """The client loads the cogs by name; not even a type-only import points back at them."""
    assert violations("bot", ("cogs",)) == []


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The rules above cannot pass vacuously: each kind of import statement is found, and marked."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    module = tmp_path / "pkg" / "sub" / "mod.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import discord.ui\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "if TYPE_CHECKING:\n"
        "    from cogs.results import View\n"
        "def f():\n"
        "    import torch\n",
        encoding="utf-8",
    )
    found = {(imp.module, imp.type_only) for imp in imports_of(module, tmp_path)}
    assert found == {
        ("typing", False),
        ("discord.ui", False),
        ("pkg.sub", False),
        ("pkg.other", False),
        ("cogs.results", True),
        ("torch", False),
    }
    assert within("bot.core.errors", "bot.core") and not within("bot.corex", "bot.core")


MODULES = [module_name(p) for pkg in ("bot.core", "bot.prompts") for p in sources(pkg)]


def test_importing_core_and_prompts_loads_neither_discord_nor_torch() -> None:
    """What a module pulls in transitively (e.g. through inference/) counts too."""
    script = (
        "import importlib, json, sys\n"
        f"mods = {MODULES!r}\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {('discord', *HEAVY)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_importing_inference_types_loads_no_torch() -> None:
    script = "import sys, inference.types, inference.specs; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
