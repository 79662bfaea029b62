"""The docs site: generated reference pages are current, the nav is complete, `make docs` is wired up."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from plugin_packages import run

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10: ssmtl depends on tomli there
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = ("cli.md", "config.md", "hooks.md", "python-api.md")


def test_generated_pages_are_up_to_date(tmp_path):
    run([sys.executable, ROOT / "scripts" / "gen_docs.py", "--out", tmp_path], cwd=ROOT)
    stale = [name for name in GENERATED if (tmp_path / name).read_text() != (DOCS / name).read_text()]
    assert stale == [], f"{stale} are out of date: run `python scripts/gen_docs.py` (or `make docs`)"


def test_nav_lists_exactly_the_pages_that_exist():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    present = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert listed == present, "every page under docs/ needs an entry in mkdocs.yml's nav, and every entry a page"


def test_docs_tooling_is_wired_up():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("mkdocs") for req in extras["docs"])
    makefile = (ROOT / "Makefile").read_text()
    assert "scripts/gen_docs.py" in makefile and "mkdocs build --strict" in makefile
    ci = (ROOT / ".ci" / "run").read_text().split()
    assert ci.index("docs") > ci.index("test")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed (make docs installs it)")
def test_site_builds_without_warnings(tmp_path):
    run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site"], cwd=ROOT)
