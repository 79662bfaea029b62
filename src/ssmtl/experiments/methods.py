"""The methods a benchmark compares: scratch, the plugins' task sets, or named task combinations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ssmtl.api.errors import SsmtlError

SCRATCH = "scratch"  # the random-init baseline; the other named methods are the plugins' task sets
INIT_PARTS = ("all", "encoder")


@dataclass(frozen=True)
class Method:
    name: str
    tasks: tuple[str, ...]  # empty: no pre-training (random init)
    init_parts: str = "all"  # what fine-tuning loads from the export: "all" or "encoder"

    @property
    def pretrained(self) -> bool:
        return bool(self.tasks)


def parse_methods(text: str | list[str], available_tasks: set[str], task_sets: Mapping[str, tuple[str, ...]]) -> list[Method]:
    """``scratch,SET,NAME=task+task[:encoder]`` -> methods (order kept, names unique).

    ``SET`` is a task set of the plugins' defaults; ``NAME=`` takes a combination of tasks and
    SETs (``multitask+local-contrastive``), ``scratch`` or a SET, and a ``:encoder`` suffix
    fine-tunes from the pre-trained encoder only (random decoder).
    """
    named = {SCRATCH: (), **task_sets}
    items = text if isinstance(text, list) else [t for t in text.split(",")]
    methods: list[Method] = []
    for raw in (i.strip() for i in items):
        if not raw:
            continue
        name, sep, combo = raw.partition("=")
        combo, _, parts = combo.partition(":")
        parts = parts.strip() or "all"
        if sep:
            if parts not in INIT_PARTS:
                raise SsmtlError(f"--methods {raw!r}: unknown suffix ':{parts}'; use ':encoder' (load only the pre-trained encoder) or ':all'")
            if combo.strip() in named:
                tasks = named[combo.strip()]
            else:  # each part a task or a task set: multitask+local-contrastive
                parts_ = [t.strip() for t in combo.split("+") if t.strip()]
                tasks = tuple(dict.fromkeys(t for part in parts_ for t in (named[part] if part in task_sets else (part,))))
                if not tasks:
                    raise SsmtlError(f"--methods {raw!r}: name a combination as NAME=task+task")
        elif name in named:
            tasks = named[name]
        else:
            raise SsmtlError(f"--methods: unknown method {name!r}; use {', '.join(named)} or NAME=task+task")
        unknown = [t for t in tasks if t not in available_tasks]
        if unknown:
            raise SsmtlError(f"--methods {raw!r}: unknown task(s) {', '.join(unknown)}; available: {', '.join(sorted(available_tasks))}")
        if any(m.name == name for m in methods):
            raise SsmtlError(f"--methods: {name!r} is given twice")
        if parts == "encoder" and not tasks:
            raise SsmtlError(f"--methods {raw!r}: ':encoder' needs a pre-trained method, not scratch")
        methods.append(Method(name, tasks, parts))
    if not methods:
        raise SsmtlError("--methods: give at least one method")
    return methods
