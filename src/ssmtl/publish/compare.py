"""``ssmtl compare``'s bookkeeping: which evaluated runs, under which column labels.

Every run keeps a column of its own. A run given as ``DIR`` is labelled by its folder name;
when two runs share one (``a/ft`` and ``b/ft``), each is labelled by as many trailing path
components as it takes to tell them apart (``a/ft``, ``b/ft``). A run given as ``LABEL=DIR``
keeps its label; the same label twice, or the same run twice, is refused (one column would
silently replace another).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmtl.api.errors import SsmtlError
from ssmtl.downstream.records import read_eval_json

EVAL_FILE = "eval.json"


def _parse(item: str) -> tuple[str | None, Path]:
    label, sep, path = item.partition("=")
    if sep and label and path:
        return label, Path(path)
    return None, Path(item)


def _suffix(path: Path, parts: int) -> str:
    names = path.resolve().parts[-parts:]
    return "/".join(names) if names else str(path)


def comparison_labels(items: list[str]) -> list[tuple[str, Path]]:
    """(label, run folder) for each ``DIR`` or ``LABEL=DIR``, every label distinct."""
    parsed = [_parse(item) for item in items]
    seen: dict[Path, str] = {}
    for item, (_, path) in zip(items, parsed):
        resolved = path.resolve()
        if resolved in seen:
            raise SsmtlError(f"{item}: the run {path} is given twice ({seen[resolved]!r} and {item!r}); give each run once")
        seen[resolved] = item
    labels: list[str | None] = [label for label, _ in parsed]
    unnamed = [i for i, label in enumerate(labels) if label is None]
    depth = {i: 1 for i in unnamed}
    while True:  # lengthen the labels that collide until none does (distinct paths always differ somewhere)
        current = {i: _suffix(parsed[i][1], depth[i]) for i in unnamed}
        taken = [labels[i] for i in range(len(labels)) if labels[i] is not None]
        clashes = {i for i in unnamed if list(current.values()).count(current[i]) > 1 or current[i] in taken}
        longest = {i for i in clashes if depth[i] < len(parsed[i][1].resolve().parts)}
        if not longest:
            break
        for i in longest:
            depth[i] += 1
    for i in unnamed:
        labels[i] = _suffix(parsed[i][1], depth[i])
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise SsmtlError(f"the label {duplicates[0]!r} names two runs; give each run a label of its own (LABEL=DIR)")
    return [(str(label), path) for label, (_, path) in zip(labels, parsed)]


def comparison_results(items: list[str]) -> dict[str, dict[str, Any]]:
    """Each run's ``eval.json`` under its label, in the order given."""
    results = {}
    for label, path in comparison_labels(items):
        eval_path = path / EVAL_FILE
        if not eval_path.is_file():
            raise SsmtlError(f"{eval_path}: not found; run `ssmtl evaluate {path}` first")
        results[label] = read_eval_json(eval_path)
    return results
