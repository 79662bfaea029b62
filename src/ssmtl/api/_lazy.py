"""Names that load on first use, listed once: in the package's ``__init__.pyi`` stub.

A package that uses this has an ``__init__.pyi`` of plain ``from MODULE import NAME``
lines (what type checkers and IDEs read) and an ``__init__.py`` that calls
:func:`attach`. The stub is the one list of the public names; at run time it is read to
learn which module defines each name, and that module is imported when the name is first
used, so ``import ssmtl.api`` (and ``ssmtl --help``) stays fast. This is the pattern of
Scientific Python's SPEC 1 (lazy loading of submodules and functions), written here in a
few lines instead of a dependency.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any, Callable


def stub_names(stub: Path) -> dict[str, str]:
    """``{public name: absolute module}`` from the ``from X import Y`` lines of a ``.pyi`` stub."""
    names: dict[str, str] = {}
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}:{alias.name}"
    return names


def attach(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose names its ``__init__.pyi`` lists."""
    where = stub_names(Path(init_file).with_suffix(".pyi"))
    namespace = importlib.import_module(package).__dict__
    public = sorted(where)

    def __getattr__(name: str) -> Any:
        target = where.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = target.split(":")
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return list(public)

    return __getattr__, __dir__, public
