"""Every hook is documented (one `## <hook>` heading in docs/hooks.md) and exercised by a test.

The same rule datasette applies to its plugin hooks: adding a hookspec without
documenting and testing it fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssmtl.api import hooks as hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS_PAGE = ROOT / "docs" / "hooks.md"
SPEC_MARK = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, SPEC_MARK))


def documented_hooks() -> set[str]:
    return set(re.findall(r"^## (ssmtl_\w+)\s*$", HOOKS_PAGE.read_text(), flags=re.MULTILINE))


def test_hookspecs_are_found():
    assert {"ssmtl_register_tasks", "ssmtl_register_datasets", "ssmtl_register_heads"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_heading_in_the_hook_reference(hook):
    assert hook in documented_hooks(), f"docs/hooks.md needs a section '## {hook}'"


def test_hook_reference_documents_no_hook_that_does_not_exist():
    assert documented_hooks() <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    tests = [p for p in sorted(Path(__file__).parent.glob("test_*.py")) if p.name != Path(__file__).name]
    users = [p.name for p in tests if hook in p.read_text()]
    assert users, f"no test under tests/ uses the hook {hook}"
