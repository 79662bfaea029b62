"""The floor plan holds: imports run one way, rooms stay small, plugin code sees only ssmtl.api.

    cli -> experiments -> pretraining, downstream -> data -> core -> api

Every ``ssmtl.*`` import of every module is checked (module level and inside functions,
since a lazy import is a dependency too). ``ssmtl`` itself (the package root, for
``__version__`` and the Python API) may be imported from anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ssmtl"

#: which parts of ssmtl each part may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "core": {"api"},
    "data": {"api", "core"},
    "pretraining": {"api", "core", "data"},
    "downstream": {"api", "core", "data"},
    "experiments": {"api", "core", "data", "pretraining", "downstream"},
    # what leaves ssmtl: exports for other code, reports for people (about runs of every kind)
    "publish": {"api", "core", "data", "pretraining", "downstream", "experiments"},
    # the host's harness for plugin tests drives the host; plugin code never imports it
    "testing": {"api", "core", "data", "pretraining", "downstream", "cli"},
    "cli": {"api", "core", "data", "pretraining", "downstream", "experiments", "publish", "testing"},
    "plugins": {"api"},
}
#: modules directly under src/ssmtl (not in a package): the root and ``python -m ssmtl``
ROOT_MODULES = {"__init__": {"api", "core", "data", "pretraining", "downstream", "experiments", "publish"}, "__main__": {"cli"}}
MAX_LINES = 400


def ssmtl_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of an ssmtl module in a file."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ssmtl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "ssmtl":
                if target == "ssmtl":  # `from ssmtl import x`: x may be a subpackage
                    found += [(node.lineno, f"ssmtl.{a.name}") for a in node.names]
                else:
                    found.append((node.lineno, target))
    return found


def part_of(module: str) -> str | None:
    """``ssmtl.data.cache`` -> ``data``; a name of the root package (``ssmtl.__version__``) -> None."""
    parts = module.split(".")
    if len(parts) < 2 or not (SRC / parts[1]).is_dir():
        return None
    return parts[1]


def layering_problems() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        here = rel.parts[0] if len(rel.parts) > 1 else None
        allowed = ALLOWED[here] | {here} if here else ROOT_MODULES[path.stem]
        for line, module in ssmtl_imports(path):
            target = part_of(module)
            if target is not None and target not in allowed:
                problems.append(f"{rel}:{line} imports {module} ({here or 'ssmtl'} may import {sorted(allowed)})")
    return problems


def test_every_part_of_ssmtl_has_a_rule():
    parts = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == set(ALLOWED), "a new package needs a place in the floor plan (ALLOWED) and in docs/architecture.md"


def test_imports_run_one_way():
    assert layering_problems() == []


def test_the_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "ssmtl"
    (fake / "core").mkdir(parents=True)
    (fake / "pretraining").mkdir()
    for pkg in ("core", "pretraining"):
        (fake / pkg / "__init__.py").write_text("")
    (fake / "core" / "bad.py").write_text("def f():\n    from ssmtl.pretraining.engine import run_pretraining\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert layering_problems() == ["core/bad.py:2 imports ssmtl.pretraining.engine (core may import ['api', 'core'])"]


def test_no_room_is_too_big_to_see_at_once():
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"split these by concept (at most {MAX_LINES} lines): {big}"


def _plugin_code_files() -> list[tuple[Path, bool]]:
    """(file, is a test) of code a plugin author writes: the example plugin and the scaffold output."""
    example = ROOT / "examples" / "ssmtl-rotation"
    files = [(p, False) for p in (example / "src").rglob("*.py")]
    files += [(p, True) for p in (example / "tests").rglob("*.py")]
    return files


def _external_problems(source: str, is_test: bool, where: str) -> list[str]:
    allowed = {"ssmtl.api", "ssmtl.testing"} if is_test else {"ssmtl.api"}
    problems = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        for name in names:
            if name.split(".")[0] == "ssmtl" and name not in allowed:
                problems.append(f"{where}:{node.lineno} imports {name}")
    return problems


def test_the_example_plugin_imports_only_the_api():
    problems = []
    for path, is_test in _plugin_code_files():
        problems += _external_problems(path.read_text(), is_test, str(path.relative_to(ROOT)))
    assert problems == []


def test_the_scaffold_output_imports_only_the_api():
    from ssmtl.cli.scaffold import PluginNames, render

    problems = []
    for relative, text in render(PluginNames.from_task("slice-stats")).items():
        if relative.endswith(".py"):
            problems += _external_problems(text, relative.startswith("tests/"), relative)
    assert problems == []


@pytest.mark.parametrize("source, is_test, bad", [
    ("from ssmtl.api import hookimpl\n", False, False),
    ("from ssmtl.core.model import UNet\n", False, True),
    ("import ssmtl.data.cache\n", False, True),
    ("from ssmtl.testing import tiny_batch\n", False, True),
    ("from ssmtl.testing import tiny_batch\n", True, False),
    ("from ssmtl import hookimpl\n", False, True),
])
def test_the_plugin_import_check_itself(source, is_test, bad):
    assert bool(_external_problems(source, is_test, "x.py")) is bad
