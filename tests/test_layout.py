"""The floor plan holds: imports run one way, rooms stay small, plugin code sees only ssmtl.api.

    cli -> experiments, publish -> pretraining, downstream -> data -> training -> host -> settings, storage -> api

Every ``ssmtl.*`` import of every module is checked (module level and inside functions,
since a lazy import is a dependency too). No module imports the package root ``ssmtl``
(its ``__init__`` is the lazy Python API, which pulls the wings in): the version is read
from ``ssmtl._version``. No two modules import each other, directly or around a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "ssmtl"

GROUND = {"api", "storage", "settings", "host", "training"}
#: which parts of ssmtl each part may import (itself always)
ALLOWED: dict[str, set[str]] = {
    # the plugin contract: imports nothing else of ssmtl
    "api": set(),
    # the ground floor: each package is one thing
    "storage": {"api"},  # files: atomic writes, locks, JSON read back with its shape checked
    "settings": {"api"},  # where settings come from: files, environment, flags, --set
    "host": {"api", "settings"},  # plugin hosting: the registry, calls into plugins, networks
    "training": {"api", "storage", "settings", "host"},  # run machinery shared by every training run
    # the wings, by audience
    "data": GROUND - {"training"},
    "pretraining": GROUND | {"data"},
    "downstream": GROUND | {"data"},
    "experiments": GROUND | {"data", "pretraining", "downstream"},
    # what leaves ssmtl: exports for other code, reports for people (about runs of every kind)
    "publish": GROUND | {"data", "pretraining", "downstream", "experiments"},
    # the host's harness for plugin tests drives the host; plugin code never imports it
    "testing": GROUND | {"data", "pretraining", "downstream", "cli"},
    "cli": GROUND | {"data", "pretraining", "downstream", "experiments", "publish", "testing"},
    "plugins": {"api"},
}
#: modules directly under src/ssmtl (not in a package): the root (the lazy Python API), the
#: version, and ``python -m ssmtl``
ROOT_MODULES = {"__init__": {"api", "pretraining", "downstream", "publish"}, "_version": set(), "__main__": {"cli"}}
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
    """``ssmtl.data.cache`` -> ``data``; a module of the root (``ssmtl._version``) -> None."""
    parts = module.split(".")
    if len(parts) < 2 or not (SRC / parts[1]).is_dir():
        return None
    return parts[1]


def _is_root(module: str) -> bool:
    """``import ssmtl`` or ``from ssmtl import NAME`` where NAME is no module of the package."""
    parts = module.split(".")
    return module == "ssmtl" or (len(parts) == 2 and not (SRC / parts[1]).is_dir() and not (SRC / f"{parts[1]}.py").is_file())


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layering_problems() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        here = rel.parts[0] if len(rel.parts) > 1 else None
        allowed = ALLOWED[here] | {here} if here else ROOT_MODULES[path.stem]
        for line, module in ssmtl_imports(path):
            if _is_root(module):
                problems.append(f"{rel}:{line} imports the package root ssmtl (read the version from ssmtl._version)")
                continue
            target = part_of(module)
            if target is not None and target not in allowed:
                problems.append(f"{rel}:{line} imports {module} ({here or 'ssmtl'} may import {sorted(allowed)})")
    return problems


def import_cycles() -> list[list[str]]:
    """The circles of the import graph between ssmtl's modules (Tarjan's strongly connected
    components of two or more modules; a package's ``__init__`` counts as its module)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, module in ssmtl_imports(path):
            # `from ssmtl.x import y` may name the module ssmtl.x.y
            targets |= {m for m in (module, *(f"{module}.{n}" for n in _imported_names(path, module))) if m in modules}
        graph[name] = targets - {name}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _imported_names(path: Path, module: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == module:
            names += [a.name for a in node.names]
    return names


def test_no_module_takes_part_in_an_import_circle():
    assert import_cycles() == []


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    fake = tmp_path / "ssmtl"
    (fake / "training").mkdir(parents=True)
    (fake / "training" / "__init__.py").write_text("")
    (fake / "training" / "curves.py").write_text("from ssmtl.training.recorder import METRICS\n")
    (fake / "training" / "recorder.py").write_text("def f():\n    from ssmtl.training.curves import write_curves\n")
    (fake / "training" / "loop.py").write_text("from ssmtl.training import recorder\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert import_cycles() == [["ssmtl.training.curves", "ssmtl.training.recorder"]]


def test_every_part_of_ssmtl_has_a_rule():
    parts = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == set(ALLOWED), "a new package needs a place in the floor plan (ALLOWED) and in docs/architecture.md"


def test_imports_run_one_way():
    assert layering_problems() == []


def test_the_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "ssmtl"
    (fake / "host").mkdir(parents=True)
    (fake / "pretraining").mkdir()
    for pkg in ("host", "pretraining"):
        (fake / pkg / "__init__.py").write_text("")
    (fake / "host" / "bad.py").write_text("def f():\n    from ssmtl.pretraining.engine import run_pretraining\n")
    (fake / "host" / "old.py").write_text("from ssmtl import __version__\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    assert layering_problems() == [
        "host/bad.py:2 imports ssmtl.pretraining.engine (host may import ['api', 'host', 'settings'])",
        "host/old.py:1 imports the package root ssmtl (read the version from ssmtl._version)"]


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
    allowed = {"ssmtl.api", "ssmtl.api.ssl", "ssmtl.testing"} if is_test else {"ssmtl.api", "ssmtl.api.ssl"}
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
