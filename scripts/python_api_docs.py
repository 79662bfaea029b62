"""The reference block of docs/python-api.md, generated from the functions themselves.

For each function of the Python API (``ssmtl.__all__``, in session order) the page gets its
signature as Python prints it and its docstring's sections (Args, Returns, Raises), so the page
cannot drift from the code: ``scripts/gen_docs.py`` rewrites the block between the markers and
``tests/test_docs.py`` fails when it is stale.
"""

from __future__ import annotations

import inspect
import re

BEGIN = "<!-- BEGIN GENERATED: the Python API's signatures and docstrings -->"
END = "<!-- END GENERATED: the Python API -->"
ORDER = ("pretrain", "finetune", "evaluate", "score_predictions", "predict", "load_network", "export", "report")
SECTIONS = ("Args", "Returns", "Raises")


def docstring_sections(doc: str) -> tuple[str, dict[str, list[str]]]:
    """``(summary paragraphs, {"Args": lines, "Returns": lines, "Raises": lines})`` of a Google-style docstring."""
    summary: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in inspect.cleandoc(doc).splitlines():
        header = line.strip().rstrip(":")
        if line.strip().endswith(":") and header in SECTIONS and not line.startswith(" "):
            current = sections.setdefault(header, [])
        elif current is not None and (line.startswith(" ") or not line.strip()):
            current.append(line[4:] if line.startswith("    ") else line.strip())
        else:
            current = None
            summary.append(line)
    trimmed = {k: "\n".join(v).strip("\n").splitlines() for k, v in sections.items()}
    return "\n".join(summary).strip(), trimmed


def documented_args(lines: list[str]) -> list[str]:
    """The parameter names an ``Args:`` section documents (``steps, batch_size, seed: ...`` names three)."""
    names = []
    for line in lines:
        match = re.match(r"^([A-Za-z_][\w, ]*):", line)
        if match and not line.startswith(" "):
            names += [n.strip() for n in match.group(1).split(",")]
    return names


def reference_block() -> str:
    import ssmtl

    lines = [BEGIN, ""]
    for name in ORDER:
        function = getattr(ssmtl, name)
        signature = str(inspect.signature(function)).replace("'", "")
        summary, sections = docstring_sections(function.__doc__ or "")
        lines += [f"### `ssmtl.{name}`", "", "```python", f"ssmtl.{name}{signature}", "```", "", summary, ""]
        for section in SECTIONS:
            body = sections.get(section)
            if body:
                lines += [f"**{section}**", "", "```text", *[ln.rstrip() for ln in body], "```", ""]
    lines.append(END)
    return "\n".join(lines)


def python_api_page(current: str) -> str:
    """``current`` (docs/python-api.md) with the block between the markers generated anew."""
    if BEGIN not in current or END not in current:
        raise SystemExit(f"docs/python-api.md: missing the markers {BEGIN!r} ... {END!r}")
    before, rest = current.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return before + reference_block() + after
