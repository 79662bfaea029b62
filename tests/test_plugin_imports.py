"""Built-in plugins are written as a third party would write them.

A module under ``src/ssmtl/plugins/<kind>/`` imports from ssmtl only the facades
``ssmtl.api`` and ``ssmtl.api.ssl`` (the momentum-contrast kit) and its own sibling modules (``ssmtl.plugins.<kind>.*``), and never a
private (``_name``) name of another module, neither imported nor reached as an
attribute. Modules under ``src/ssmtl/api/`` import nothing from ssmtl outside
``ssmtl.api``, and the dataset toolkit imports no image-format library when it is
imported. The scanners are checked on sources that break each rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
#: what a plugin may import from ssmtl besides its siblings: the public packages of the plugin contract
FACADES = {"ssmtl.api", "ssmtl.api.ssl"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``from X import ...`` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def plugin_import_problems(source: str, module: str, is_package: bool = False) -> list[str]:
    """What breaks the plugin import rules in ``source`` (the code of ``module``), as 'line: problem'."""
    kind = ".".join(module.split(".")[:3])  # ssmtl.plugins.<kind>
    problems: list[str] = []
    sibling_aliases: set[str] = set()

    def allowed(target: str) -> bool:
        return target in FACADES or target == kind or target.startswith(kind + ".")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ssmtl":
                    if not allowed(alias.name):
                        problems.append(f"{node.lineno}: import {alias.name}")
                    elif alias.name not in FACADES:
                        sibling_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, is_package)
            if target.split(".")[0] != "ssmtl":
                continue
            if not allowed(target):
                problems.append(f"{node.lineno}: from {target} import ...")
                continue
            for alias in node.names:
                if alias.name.startswith("_"):
                    problems.append(f"{node.lineno}: private {alias.name} from {target}")
                elif target not in FACADES:
                    sibling_aliases.add(alias.asname or alias.name)
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in sibling_aliases):
            problems.append(f"{node.lineno}: private {node.value.id}.{node.attr}")
    return problems


def api_import_problems(source: str) -> list[str]:
    """Imports of ssmtl modules outside ssmtl.api, as 'line: module'."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        targets = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for target in targets:
            if target.split(".")[0] == "ssmtl" and not (target == "ssmtl.api" or target.startswith("ssmtl.api.")):
                problems.append(f"{node.lineno}: {target}")
    return problems


def test_the_plugin_scanner_finds_each_broken_rule():
    source = (
        "from ssmtl.api import hookimpl\n"                         # fine
        "from ssmtl.plugins.datasets import nifti\n"               # fine: a sibling module
        "from ssmtl.plugins.datasets.nifti_io import load_image\n"  # fine: a public sibling name
        "from ssmtl.core.model import UNet\n"                      # 4: outside the api
        "from ssmtl.api.datasets.files import FileKind\n"          # 5: behind the facade
        "from ssmtl.plugins.tasks.order import OrderConfig\n"      # 6: another kind's plugin
        "from ssmtl.plugins.datasets.nifti import _secret\n"       # 7: a private name
        "from .nifti import _other\n"                              # 8: the same, relative
        "import ssmtl.data.cache\n"                                # 9: outside the api
        "x = nifti._private_helper(1)\n"                           # 10: a private attribute
        "y = nifti.__name__\n"                                     # fine: a dunder
    )
    found = plugin_import_problems(source, "ssmtl.plugins.datasets.example")
    assert [p.split(":")[0] for p in sorted(found, key=lambda p: int(p.split(":")[0]))] == [
        "4", "5", "6", "7", "8", "9", "10"], found


def test_plugins_import_only_the_api_and_public_sibling_names():
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((SRC / "ssmtl" / "plugins").rglob("*.py"))
        if (found := plugin_import_problems(path.read_text(), module_name(path), path.name == "__init__.py"))
    }
    assert offenders == {}


def test_api_modules_import_nothing_else_from_ssmtl():
    assert api_import_problems("from ssmtl.api.errors import X\nimport ssmtl.core.model\nfrom ssmtl.data import a\n") == [
        "2: ssmtl.core.model", "3: ssmtl.data"]
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((SRC / "ssmtl" / "api").rglob("*.py"))
        if (found := api_import_problems(path.read_text()))
    }
    assert offenders == {}


def test_the_dataset_toolkit_imports_no_format_library():
    names = [module_name(p) for p in sorted((SRC / "ssmtl" / "api" / "datasets").glob("*.py"))]
    code = (f"import importlib, sys\nfor name in {names!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in ('nibabel', 'SimpleITK', 'pydicom', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(names) >= 9 and result.stdout.strip() == "[]"
