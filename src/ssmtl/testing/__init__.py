"""Test helpers for ssmtl plugin authors (and for ssmtl itself).

Installed with ssmtl and loaded by pytest automatically through the ``pytest11``
entry point, so a plugin's tests use the fixtures without any ``conftest.py``
(do not also list it in ``pytest_plugins``; disable it with ``-p no:ssmtl``):

* ``ssmtl_registry_factory``: ``make(*plugins, builtins=())``, a registry holding
  only the given plugins; ``ssmtl_plugin_manager``: a bare pluggy manager;
* ``ssmtl_tiny_cache``: a tiny phantom HDF5 cache (4 subjects, 8 slices of 32x32);
* ``ssmtl_cli``: the real CLI in-process, e.g.
  ``ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--task", "mine", plugins=[plugin])``.

And :func:`check_task_contract`, which checks a task the way the engine uses it::

    from ssmtl.testing import check_task_contract
    import my_package.plugin

    def test_contract():
        check_task_contract(my_package.plugin)

The fixtures import nothing heavy until used: this module is imported by every
pytest run in an environment where ssmtl is installed. The helpers below load
torch on first access for the same reason.
"""

from __future__ import annotations

from typing import Any

from ssmtl.testing.fixtures import (  # noqa: F401  (pytest finds fixtures as module attributes)
    ssmtl_cli,
    ssmtl_plugin_manager,
    ssmtl_registry_factory,
    ssmtl_tiny_cache,
)

_LAZY = {
    "check_task_contract": "ssmtl.testing.contract",
    "ContractReport": "ssmtl.testing.contract",
    "TaskContractError": "ssmtl.testing.contract",
    "tiny_batch": "ssmtl.testing.tiny",
    "tiny_network": "ssmtl.testing.tiny",
    "tiny_context": "ssmtl.testing.tiny",
    "cache_summary": "ssmtl.testing.fixtures",
    "SsmtlCli": "ssmtl.testing.cli",
}

__all__ = [
    "ssmtl_cli",
    "ssmtl_plugin_manager",
    "ssmtl_registry_factory",
    "ssmtl_tiny_cache",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
