"""``ssmtl plugin new``, tried as a new plugin author would.

Scaffold a package, pip-install it, see it in ``ssmtl plugins``, run its generated
tests, pre-train with it next to a built-in task, then break it and check that it
is reported by name while the built-ins keep working. The package gets a name
unique to this process (parallel sessions share the environment) and is
uninstalled at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from plugin_packages import TINY_RUN, install_editable, plugins_json, run, ssmtl, uninstall
from ssmtl.cli.scaffold import PluginNames, render

pytestmark = pytest.mark.slow


def plugin_entry(data: dict, name: str) -> dict:
    [entry] = [p for p in data["plugins"] if p["name"] == name]
    return entry


def test_names_derive_from_the_task_name():
    names = PluginNames.from_task("slice-stats")
    assert (names.distribution, names.package, names.camel, names.entry_point) == (
        "ssmtl-slice-stats", "ssmtl_slice_stats", "SliceStats", "slice-stats")
    files = render(names)
    assert set(files) == {"pyproject.toml", "README.md", ".gitignore", "src/ssmtl_slice_stats/__init__.py",
                          "src/ssmtl_slice_stats/plugin.py", "tests/test_plugin.py"}
    assert 'slice-stats = "ssmtl_slice_stats.plugin"' in files["pyproject.toml"]
    assert "class SliceStatsConfig(TaskConfig)" in files["src/ssmtl_slice_stats/plugin.py"]
    assert "$" not in files["src/ssmtl_slice_stats/plugin.py"]  # every placeholder filled


@pytest.mark.parametrize("bad", ["Bad", "two words", "_x", "x-", "ssmtl-foo", "order"])
def test_invalid_or_taken_names_are_refused(ssmtl_cli, tmp_path, bad):
    result = ssmtl_cli("plugin", "new", bad, "--dir", tmp_path)
    assert result.exit_code == 2 and result.stderr.startswith("error:"), result.output
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_overwritten(ssmtl_cli, tmp_path):
    assert ssmtl_cli("plugin", "new", "stats", "--dir", tmp_path).exit_code == 0
    again = ssmtl_cli("plugin", "new", "stats", "--dir", tmp_path)
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.installs
def test_scaffold_install_train_break(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    task = f"probe{os.getpid()}"
    names = PluginNames.from_task(task)
    created = ssmtl_cli("plugin", "new", task, "--dir", tmp_path)
    assert created.exit_code == 0, created.output
    root = tmp_path / names.distribution
    assert f"pip install -e {root}" in created.stdout
    install_editable(root)
    try:
        # 1. listed, with its distribution, version, hooks and task
        entry = plugin_entry(plugins_json(), task)
        assert entry["distribution"] == names.distribution and entry["version"] == "0.1.0"
        assert entry["hooks"] == ["ssmtl_register_tasks"] and entry["provides"] == {"tasks": [task]}
        assert entry["error"] is None

        # 2. its generated tests pass as generated
        tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root, timeout=600)
        assert "4 passed" in tests.stdout

        # 3. pre-training with it next to a built-in task
        out = tmp_path / "run"
        ssmtl("pretrain", "--data", ssmtl_tiny_cache, "--task", task, "--task", "contrastive", "--out", out,
              "--workers", "0", *TINY_RUN)
        manifest = json.loads((out / "export" / "manifest.json").read_text())
        assert set(manifest["tasks"]) == {task, "contrastive"}

        # 4. break its config model: a field without a default (`--task NAME` alone must work)
        plugin_py = root / "src" / names.package / "plugin.py"
        source = plugin_py.read_text()
        plugin_py.write_text(source.replace("Field(64, ge=1,", "Field(ge=1,"))
        listing = ssmtl("plugins")
        assert task in listing.stdout
        warning = " ".join(listing.stderr.split())
        assert f"plugin {task!r} from {names.distribution} skipped" in warning and "no valid defaults" in warning
        builtin_only = ssmtl("pretrain", "--data", ssmtl_tiny_cache, "--task", "contrastive", "--out", tmp_path / "run2",
                             "--workers", "0", *TINY_RUN)
        assert f"plugin {task!r} from {names.distribution} skipped" in " ".join(builtin_only.stderr.split())
        asked = ssmtl("pretrain", "--data", ssmtl_tiny_cache, "--task", task, "--out", tmp_path / "run3", check=False)
        assert asked.returncode == 2 and f"unknown task {task!r}" in asked.stderr and "Traceback" not in asked.stderr

        # 5. other breakages, each reported by name with what is wrong
        for broken, problem in [
            (source.replace("def ssmtl_register_tasks():", "def ssmtl_register_tasks(config):"), "invalid hooks"),
            (source.replace("    return [\n        TaskSpec(", "    return [\n        dict("), "expected TaskSpec, got dict"),
        ]:
            assert broken != source
            plugin_py.write_text(broken)
            entry = plugin_entry(plugins_json(), task)
            assert problem in entry["error"] and entry["provides"] == {}
    finally:
        uninstall(names.distribution)
    assert task not in {p["name"] for p in plugins_json()["plugins"]}
