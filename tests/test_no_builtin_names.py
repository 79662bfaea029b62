"""Core names no plugin: the wings and the ground floor never spell a built-in plugin's name.

Defaults that name built-ins (the default tasks, the default head, the benchmark's task
sets) come from the registry (``ssmtl_defaults``, provided by ``ssmtl.plugins.defaults``),
so a third-party plugin is never a second-class citizen and renaming a built-in touches
only the plugin side. The scan reads string literals through the AST: docstrings and
comments may mention built-ins, and so may prose (a literal with a space in it, such as a
field description or an error message). A literal made only of names, such as
``"contrastive"``, ``"contrastive,order"`` or ``"tasks.order"``, is behaviour and fails.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ssmtl.host.registry import build_registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "core", "data", "pretraining", "downstream", "experiments", "publish")
KINDS = ("tasks", "datasets", "heads", "networks")
FILE_SUFFIXES = {"json", "jsonl", "h5", "csv", "toml", "yaml", "yml", "md", "png", "txt", "safetensors", "nii", "gz"}

# (file under src/ssmtl, literal): the same word with another meaning, and why
NOT_A_PLUGIN = {
    ("data/cache_writer.py", "position"): "the slice index's column of relative slice positions (HDF5 file format)",
    ("data/scan_writer.py", "nifti"): "the NIfTI file format (SourceGeometry.format, predict --format), not the dataset",
    ("data/scan_writer.py", "dicom"): "the DICOM file format (SourceGeometry.format), not the dataset",
    ("publish/bundle.py", "segmentation"): "the 'format' of a MONAI bundle output (metadata.json's network_data_format), not the head",
}


def builtin_names() -> set[str]:
    """Every name a built-in plugin is known by: what it provides and its entry-point module."""
    registry = build_registry(external=False)
    names = {name for kind in KINDS for name in registry.kind(kind)}
    names |= {plugin.name.rsplit(".", 1)[-1] for plugin in registry.plugins}  # local_contrastive, ...
    names |= set(registry.defaults.task_sets)
    names |= {name.replace("-", "_") for name in names}
    # what plugins provide (tasks, heads, defaults...) is the registry's vocabulary, not a plugin's name
    return names - {*KINDS, "defaults"}


def docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def named_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of each string literal that is a name, or names joined by , + : . = /
    (a file name such as ``manifest.json`` is not a name)."""
    tree = ast.parse(source)
    skip = docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value.strip()
        if not text or re.search(r"\s", text):
            continue  # prose: a description, a message, a help text
        tokens = [t for t in re.split(r"[,+:=/]", text) if t.rpartition(".")[2] not in FILE_SUFFIXES]  # manifest.json is a file
        if any(part in names for token in tokens for part in token.split(".")):
            hits.append((node.lineno, node.value))
    return sorted(hits)


def test_the_scanner_tells_names_from_prose():
    source = '''"""Docstring naming contrastive."""
DEFAULT = ("contrastive", "order")  # names: caught
COMBO = "scratch,contrastive"       # names joined: caught
KEY = "tasks.order"                 # a dotted key: caught
HELP = "e.g. contrastive or order"  # prose: allowed
OTHER = "orders"                    # another word: allowed
FILE = "order.json"                 # a file name: allowed
def f():
    """order: the docstring of a function."""
'''
    hits = named_literals(source, {"contrastive", "order"})
    assert [line for line, _ in hits] == [2, 2, 3, 4]


def test_the_scan_knows_every_builtin_name():
    names = builtin_names()
    listed = {"contrastive", "order", "reconstruct", "neighbor", "position", "local_contrastive", "segmentation",
              "phantom", "nifti", "dicom", "itk", "mmwhs", "acdc", "manifest", "multitask"}
    assert listed <= names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_builtin_plugin_name_is_used_for_behaviour(package):
    names = builtin_names()
    offenders = []
    for path in sorted((ROOT / "src" / "ssmtl" / package).rglob("*.py")):
        relative = path.relative_to(ROOT / "src" / "ssmtl").as_posix()
        for line, literal in named_literals(path.read_text(), names):
            if (relative, literal) not in NOT_A_PLUGIN:
                offenders.append(f"{relative}:{line}: {literal!r}")
    assert offenders == [], (
        "core code names built-in plugins; take the name from the registry "
        "(registry.defaults, filled by ssmtl.plugins.defaults) instead:\n  " + "\n  ".join(offenders)
    )
